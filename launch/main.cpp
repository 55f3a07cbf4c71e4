// launch/main.cpp — the `ptrain` executable.
#include "launch/cli.h"

int main(int argc, char** argv) { return ptrain::launch::main_entry(argc, argv); }
