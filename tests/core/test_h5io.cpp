// tests/core/test_h5io.cpp — the HDF5 layer: round trips of every stored type (bf16 bit
// exactness and round-to-nearest-even), hyperslabs, attributes, listing, error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/dtype.h"
#include "core/h5io.h"

using namespace ptrain;
namespace fs = std::filesystem;

namespace {

fs::path test_dir() {
  const char* env = std::getenv("PTRAIN_TEST_TMP");
  fs::path d = fs::path(env && *env ? env : "/tmp") / "core_test_h5io";
  fs::create_directories(d);
  return d;
}
std::string tmp(const std::string& name) { return (test_dir() / name).string(); }

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// Every 16-bit pattern as a bf16 value (all finite, inf, NaN, subnormals, ±0).
std::vector<float> all_bf16_values() {
  std::vector<float> v(65536);
  for (uint32_t b = 0; b < 65536; ++b) v[b] = bf16_bits_to_float(static_cast<uint16_t>(b));
  return v;
}

}  // namespace

TEST(H5io, F32RoundTripExact) {
  const std::string p = tmp("f32.h5");
  std::vector<float> v = {1.0f, -0.0f, 3.14159274f, 1e-42f, std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(), -7.5f, 123456.789f};
  {
    auto f = h5::File::create(p);
    h5::write(f, "a/b/w", Tensor::from_vector(v, {2, 4}), DType::f32);
  }
  auto f = h5::File::open(p);
  EXPECT_EQ(h5::shape(f, "a/b/w"), (Shape{2, 4}));
  EXPECT_EQ(h5::stored_type(f, "a/b/w"), h5::StoredType::f32);
  Tensor t = h5::read(f, "/a/b/w");
  ASSERT_EQ(t.dtype(), DType::f32);
  ASSERT_EQ(t.shape(), (Shape{2, 4}));
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(bits_of(t.data<float>()[i]), bits_of(v[i])) << i;
}

TEST(H5io, Bf16EveryBitPatternRoundTripsExactly) {
  const std::string p = tmp("bf16_all.h5");
  auto v = all_bf16_values();
  {
    auto f = h5::File::create(p);
    h5::write(f, "x", Tensor::from_vector(v, {256, 256}), DType::bf16);
  }
  auto f = h5::File::open(p);
  EXPECT_EQ(h5::stored_type(f, "x"), h5::StoredType::bf16);
  Tensor t = h5::read(f, "x");
  ASSERT_EQ(t.dtype(), DType::f32);
  for (uint32_t b = 0; b < 65536; ++b) {
    const float got = t.data<float>()[b];
    if (std::isnan(v[b])) {
      // NaN stays NaN (payload quietened by float_to_bf16_bits), sign kept.
      EXPECT_TRUE(std::isnan(got)) << b;
      EXPECT_EQ(std::signbit(got), std::signbit(v[b])) << b;
    } else {
      ASSERT_EQ(bits_of(got), bits_of(v[b])) << "bf16 pattern " << b;
    }
  }
}

TEST(H5io, Bf16RoundsToNearestEven) {
  const std::string p = tmp("bf16_round.h5");
  // 1 + 2^-8 is exactly half-way between bf16 1.0 and 1.0078125: ties to even -> 1.0.
  // 1 + 3*2^-8 is half-way between 1.0078125 (odd mantissa) and 1.015625: -> 1.015625.
  // 1 + 2^-8 + 2^-20 is above half-way -> 1.0078125.
  std::vector<float> in = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.0f - 0x1p-7f,
                           1e-40f, 3.0e38f, 3.4e38f};
  {
    auto f = h5::File::create(p);
    h5::write(f, "r", Tensor::from_vector(in, {7}), DType::bf16);
  }
  auto f = h5::File::open(p);
  auto out = h5::read(f, "r").to_float_vector();
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 1.015625f);
  EXPECT_EQ(out[2], 1.0078125f);
  EXPECT_EQ(out[3], -2.0f);  // -2 - 2^-7 is a tie between -2 (even) and -2.015625
  for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(bits_of(out[i]), bits_of(round_bf16(in[i]))) << i;
  EXPECT_TRUE(std::isinf(out[6]));  // 3.4e38 rounds past the largest bf16
}

TEST(H5io, Bf16LargeBlockIsWrittenInPieces) {
  // More than the 4M-element conversion piece: the piecewise path must place every row.
  const std::string p = tmp("bf16_big.h5");
  const int64_t rows = 3, cols = (int64_t{1} << 21) + 3;
  Tensor t = Tensor::empty({rows, cols});
  float* x = t.data<float>();
  for (int64_t i = 0; i < rows * cols; ++i) x[i] = static_cast<float>(i % 1000) * 0.25f - 100.0f;
  {
    auto f = h5::File::create(p);
    h5::write(f, "big", t, DType::bf16);
  }
  auto f = h5::File::open(p);
  Tensor r = h5::read(f, "big");
  ASSERT_EQ(r.shape(), t.shape());
  for (int64_t i = 0; i < rows * cols; ++i) ASSERT_EQ(r.data<float>()[i], round_bf16(x[i])) << i;
}

TEST(H5io, F16RoundTrip) {
  const std::string p = tmp("f16.h5");
  std::vector<float> in = {1.0f, 0.1f, -65504.0f, 70000.0f, 6e-8f, 1.0f + 0x1p-11f, 2.0f / 3.0f};
  {
    auto f = h5::File::create(p);
    h5::write(f, "h", Tensor::from_vector(in, {7}), DType::f16);
  }
  auto f = h5::File::open(p);
  EXPECT_EQ(h5::stored_type(f, "h"), h5::StoredType::f16);
  auto out = h5::read(f, "h").to_float_vector();
  for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(bits_of(out[i]), bits_of(round_f16(in[i]))) << i;
  EXPECT_TRUE(std::isinf(out[3]));
  EXPECT_EQ(out[5], 1.0f);  // tie to even
}

TEST(H5io, I32AndScalarAndF64Sources) {
  const std::string p = tmp("i32.h5");
  std::vector<int32_t> iv = {0, -1, 2147483647, -2147483647 - 1, 42, 7};
  {
    auto f = h5::File::create(p);
    h5::write(f, "ints", Tensor::from_vector_i32(iv, {3, 2}), DType::i32);
    h5::write(f, "scalar", Tensor::from_vector({2.5f}, {}), DType::f32);
    h5::write(f, "from_f64", Tensor::from_vector_f64({0.1, -1e300}, {2}), DType::f32);
    h5::write(f, "empty", Tensor::zeros({0, 3}), DType::bf16);
  }
  auto f = h5::File::open(p);
  EXPECT_EQ(h5::stored_type(f, "ints"), h5::StoredType::integer);
  Tensor t = h5::read(f, "ints");
  ASSERT_EQ(t.dtype(), DType::i32);
  ASSERT_EQ(t.shape(), (Shape{3, 2}));
  for (size_t i = 0; i < iv.size(); ++i) EXPECT_EQ(t.data<int32_t>()[i], iv[i]);
  Tensor s = h5::read(f, "scalar");
  EXPECT_EQ(s.shape(), Shape{});
  EXPECT_EQ(s.data<float>()[0], 2.5f);
  auto d = h5::read(f, "from_f64").to_float_vector();
  EXPECT_EQ(d[0], 0.1f);
  EXPECT_TRUE(std::isinf(d[1]) && d[1] < 0);
  EXPECT_EQ(h5::read(f, "empty").shape(), (Shape{0, 3}));
}

TEST(H5io, WritingReplacesADataset) {
  const std::string p = tmp("replace.h5");
  auto f = h5::File::create(p);
  h5::write(f, "w", Tensor::from_vector({1, 2, 3}, {3}), DType::f32);
  h5::write(f, "w", Tensor::from_vector({4, 5}, {2}), DType::bf16);
  EXPECT_EQ(h5::read(f, "w").to_float_vector(), (std::vector<float>{4, 5}));
  EXPECT_EQ(h5::stored_type(f, "w"), h5::StoredType::bf16);
}

TEST(H5io, WriteRefusesMismatchedTypes) {
  auto f = h5::File::create(tmp("mismatch.h5"));
  EXPECT_THROW(h5::write(f, "a", Tensor::from_vector_i32({1}, {1}), DType::f32), Error);
  EXPECT_THROW(h5::write(f, "b", Tensor::from_vector({1}, {1}), DType::i32), Error);
  EXPECT_THROW(h5::write(f, "c", Tensor::from_vector({1}, {1}), DType::f64), Error);
}

TEST(H5io, Slabs) {
  const std::string p = tmp("slab.h5");
  // Full tensor [4, 6] with value 10*r + c, written as four [2, 3] blocks.
  {
    auto f = h5::File::create(p);
    h5::create_dataset(f, "param/w", {4, 6}, DType::bf16);
    h5::create_dataset(f, "param/i", {5}, DType::i32);
    for (int64_t br = 0; br < 2; ++br)
      for (int64_t bc = 0; bc < 2; ++bc) {
        std::vector<float> v;
        for (int64_t r = 0; r < 2; ++r)
          for (int64_t c = 0; c < 3; ++c) v.push_back(static_cast<float>(10 * (2 * br + r) + 3 * bc + c) + 0.001f);
        h5::write_slab(f, "param/w", {2 * br, 3 * bc}, Tensor::from_vector(v, {2, 3}));
      }
    h5::write_slab(f, "param/i", {1}, Tensor::from_vector_i32({7, 8, 9}, {3}));
    EXPECT_THROW(h5::write_slab(f, "param/w", {3, 0}, Tensor::zeros({2, 3})), Error);  // out of bounds
    EXPECT_THROW(h5::write_slab(f, "param/w", {0}, Tensor::zeros({2})), Error);        // wrong rank
  }
  auto f = h5::File::open(p);
  Tensor full = h5::read(f, "param/w");
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t c = 0; c < 6; ++c)
      EXPECT_EQ(full.data<float>()[r * 6 + c], round_bf16(static_cast<float>(10 * r + c) + 0.001f));
  Tensor mid = h5::read_slab(f, "param/w", {1, 2}, {2, 3});
  ASSERT_EQ(mid.shape(), (Shape{2, 3}));
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(mid.data<float>()[r * 3 + c], round_bf16(static_cast<float>(10 * (r + 1) + c + 2) + 0.001f));
  Tensor iv = h5::read(f, "param/i");
  EXPECT_EQ(std::vector<int32_t>(iv.data<int32_t>(), iv.data<int32_t>() + 5), (std::vector<int32_t>{0, 7, 8, 9, 0}));
  std::vector<int32_t> buf(2);
  h5::read_ints(f, "param/i", 2, 2, buf.data());
  EXPECT_EQ(buf, (std::vector<int32_t>{8, 9}));
  EXPECT_THROW(h5::read_ints(f, "param/i", 4, 2, buf.data()), Error);
  EXPECT_THROW(h5::read_slab(f, "param/w", {0, 4}, {1, 3}), Error);
}

TEST(H5io, Attributes) {
  const std::string p = tmp("attr.h5");
  {
    auto f = h5::File::create(p);
    h5::write(f, "g/d", Tensor::zeros({2}), DType::f32);
    h5::write_attr(f, "/", "tokenizer", "byte");
    h5::write_attr(f, "/", "vocab_size", int64_t{256});
    h5::write_attr(f, "g/d", "full_shape", std::vector<int64_t>{8, 2});
    h5::write_attr(f, "g/d", "empty", std::vector<int64_t>{});
    h5::write_attr(f, "g", "lr", 3.0e-4);
    h5::write_attr(f, "g", "lr", 1.5);  // replaces
  }
  auto f = h5::File::open(p);
  EXPECT_TRUE(h5::has_attr(f, "/", "tokenizer"));
  EXPECT_FALSE(h5::has_attr(f, "/", "nope"));
  EXPECT_FALSE(h5::has_attr(f, "missing/object", "x"));
  EXPECT_EQ(h5::read_attr_string(f, "/", "tokenizer"), "byte");
  EXPECT_EQ(h5::read_attr_int(f, "/", "vocab_size"), 256);
  EXPECT_EQ(h5::read_attr_double(f, "/", "vocab_size"), 256.0);
  EXPECT_EQ(h5::read_attr_ints(f, "g/d", "full_shape"), (std::vector<int64_t>{8, 2}));
  EXPECT_TRUE(h5::read_attr_ints(f, "g/d", "empty").empty());
  EXPECT_EQ(h5::read_attr_double(f, "g", "lr"), 1.5);
  EXPECT_THROW(h5::read_attr_int(f, "/", "tokenizer"), UserError);  // wrong kind
  EXPECT_THROW(h5::read_attr_int(f, "g/d", "full_shape"), UserError);
  EXPECT_THROW(h5::read_attr_string(f, "/", "absent"), UserError);
  try {
    h5::read_attr_int(f, "g", "absent");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("absent"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos);
  }
}

TEST(H5io, ListAndHas) {
  auto f = h5::File::create(tmp("list.h5"));
  for (const char* n : {"param/model.layers.1.w", "param/model.layers.0.w", "master/x", "top", "a/b/c/d"})
    h5::write(f, n, Tensor::zeros({1}), DType::f32);
  EXPECT_EQ(h5::list_datasets(f), (std::vector<std::string>{"a/b/c/d", "master/x", "param/model.layers.0.w",
                                                            "param/model.layers.1.w", "top"}));
  EXPECT_EQ(h5::list_datasets(f, "param"),
            (std::vector<std::string>{"param/model.layers.0.w", "param/model.layers.1.w"}));
  EXPECT_TRUE(h5::has(f, "/"));
  EXPECT_TRUE(h5::has(f, "a/b"));
  EXPECT_TRUE(h5::has(f, "/a/b/c/d"));
  EXPECT_FALSE(h5::has(f, "a/x/c"));
  EXPECT_FALSE(h5::has(f, "top/below"));
  EXPECT_THROW(h5::list_datasets(f, "nogroup"), UserError);
  EXPECT_THROW(h5::read(f, "nothing"), UserError);
  EXPECT_THROW(h5::read(f, "a/b"), UserError);  // a group, not a dataset
}

TEST(H5io, OpenErrorsAreUserErrors) {
  const std::string missing = tmp("does_not_exist.h5");
  fs::remove(missing);
  try {
    h5::File::open(missing);
    FAIL();
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(missing), std::string::npos) << m;
    EXPECT_NE(m.find("HINT"), std::string::npos) << m;
  }
  const std::string text = tmp("not_hdf5.txt");
  std::ofstream(text) << "hello, this is not HDF5\n";
  EXPECT_FALSE(h5::File::is_hdf5(text));
  EXPECT_FALSE(h5::File::is_hdf5(missing));
  try {
    h5::File::open(text);
    FAIL();
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(text), std::string::npos) << m;
    EXPECT_NE(m.find("not an HDF5 file"), std::string::npos) << m;
  }
  EXPECT_THROW(h5::File::open(test_dir().string()), UserError);  // a directory
  EXPECT_THROW(h5::File::create(tmp("no_such_dir/x.h5")), UserError);
  h5::File::create(tmp("ok.h5"));
  EXPECT_TRUE(h5::File::is_hdf5(tmp("ok.h5")));
}

TEST(H5io, MoveAndCloseReleaseTheFile) {
  const std::string p = tmp("move.h5");
  h5::File a = h5::File::create(p);
  h5::write(a, "x", Tensor::from_vector({1}, {1}), DType::f32);
  h5::File b = std::move(a);
  EXPECT_FALSE(a.is_open());
  EXPECT_TRUE(b.is_open());
  b.close();
  EXPECT_FALSE(b.is_open());
  // Closed for real: it can be renamed and re-created at once.
  fs::rename(p, p + ".moved");
  auto c = h5::File::open(p + ".moved", true);
  EXPECT_EQ(h5::read(c, "x").to_float_vector(), std::vector<float>{1});
}

TEST(H5io, ReadsTypesWrittenByOtherTools) {
  // Datasets and attributes as h5py or other tools write them, made with the raw C API:
  // f64 and uint16 datasets, an int64 dataset, a fixed-length string attribute.
  const std::string p = tmp("foreign.h5");
  {
    hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t n = 4;
    hid_t sp = H5Screate_simple(1, &n, nullptr);
    const double dv[4] = {0.5, -1.25, 1e10, 1e-3};
    hid_t d = H5Dcreate2(f, "f64", H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, dv);
    H5Dclose(d);
    const uint16_t uv[4] = {0, 1, 65535, 300};
    d = H5Dcreate2(f, "u16", H5T_STD_U16LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, uv);
    H5Dclose(d);
    const int64_t lv[4] = {5, -6, int64_t{1} << 40, 7};
    d = H5Dcreate2(f, "i64", H5T_STD_I64BE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, lv);
    H5Dclose(d);
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 8);
    H5Tset_strpad(st, H5T_STR_NULLPAD);
    hid_t ss = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "tokenizer", st, ss, H5P_DEFAULT, H5P_DEFAULT);
    const char buf[8] = {'g', 'p', 't', '2', 0, 0, 0, 0};
    H5Awrite(a, st, buf);
    H5Aclose(a);
    H5Sclose(ss);
    H5Tclose(st);
    H5Sclose(sp);
    H5Fclose(f);
  }
  auto f = h5::File::open(p);
  EXPECT_EQ(h5::stored_type(f, "f64"), h5::StoredType::f64);
  EXPECT_EQ(h5::read(f, "f64").to_float_vector(), (std::vector<float>{0.5f, -1.25f, 1e10f, 1e-3f}));
  std::vector<int32_t> out(4);
  h5::read_ints(f, "u16", 0, 4, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{0, 1, 65535, 300}));
  h5::Dataset ds(f, "i64", 1 << 20);
  EXPECT_EQ(ds.shape(), Shape{4});
  ds.read_ints(0, 4, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{5, -6, std::numeric_limits<int32_t>::max(), 7}));  // clipped
  EXPECT_THROW(h5::read_ints(f, "f64", 0, 1, out.data()), Error);  // not integer
  EXPECT_EQ(h5::read_attr_string(f, "/", "tokenizer"), "gpt2");
}

TEST(H5io, IntAppenderGrowsAChunkedDataset) {
  const std::string p = tmp("append.h5");
  std::vector<int32_t> all;
  {
    auto f = h5::File::create(p);
    h5::IntAppender a(f, "tokens", h5::IntStore::u16, 7);
    for (int k = 0; k < 5; ++k) {
      std::vector<int32_t> v;
      for (int i = 0; i < 3 + 4 * k; ++i) v.push_back((k * 1000 + i * 77) % 65536);
      a.append(v.data(), static_cast<int64_t>(v.size()));
      all.insert(all.end(), v.begin(), v.end());
    }
    EXPECT_EQ(a.size(), static_cast<int64_t>(all.size()));
    const int32_t bad = 70000;
    EXPECT_THROW(a.append(&bad, 1), Error);
  }
  auto f = h5::File::open(p);
  EXPECT_EQ(h5::shape(f, "tokens"), Shape{static_cast<int64_t>(all.size())});
  std::vector<int32_t> back(all.size());
  h5::read_ints(f, "tokens", 0, static_cast<int64_t>(all.size()), back.data());
  EXPECT_EQ(back, all);
}
