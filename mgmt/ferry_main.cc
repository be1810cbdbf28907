// ferry: the single binary. Subcommands are wired in mgmt/cli.cc.
int main() { return 0; }
