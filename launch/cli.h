// launch/cli.h — the `ptrain` command line. Only this layer turns errors into exit codes:
//   0 success, 1 internal error, 2 bad input (config, data, checkpoint, command line),
//   128+N stopped by signal N after writing a checkpoint.
#pragma once

namespace ptrain::launch {

/// Runs `ptrain` with the given arguments; returns the exit status (never throws).
int main_entry(int argc, char** argv);

}  // namespace ptrain::launch
