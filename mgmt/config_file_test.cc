// Strict TOML configuration: each mistake that used to be ignored (a typo'd key, a garbage line,
// a wrong type, an out-of-range value) is refused with exit 2 and the file's line and key named;
// a valid file sets the options and the command line overrides it.
#include "mgmt/config_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace ferry::mgmt {
namespace {

struct Parsed {
  int status;
  std::string message;
  double give_up_s = 60;
  unsigned queue_depth = 128;
  bool stream = false;
  std::vector<std::string> volumes;
};

Parsed parse(const std::string& toml, std::vector<std::string> extra = {}) {
  char path[] = "/tmp/ferry-config-test.XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  ::close(fd);
  std::ofstream(path) << toml;
  Parsed p{};
  p.give_up_s = 60;
  p.queue_depth = 128;
  CLI::App app{"test", "ferry test"};
  bool check = false;
  add_config_flags(app, check);
  app.add_option("--give-up-s", p.give_up_s)->check(CLI::Range(0.1, 86400.0));
  app.add_option("--queue-depth", p.queue_depth)->check(CLI::Range(1u, 1024u));
  app.add_flag("--stream", p.stream);
  app.add_option("--volume", p.volumes);
  std::vector<std::string> args = {"ferry", "--config", path};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  try {
    app.parse(int(argv.size()), argv.data());
    p.status = -1;
  } catch (const CLI::ParseError& e) {
    p.status = e.get_exit_code();
    p.message = describe_parse_error(app, e, int(argv.size()), argv.data());
  }
  std::remove(path);
  return p;
}

TEST(StrictConfig, TypoKeyRefusedWithLineAndSuggestion) {
  const Parsed p = parse("stream = true\ngive-up-secs = 5\n");
  EXPECT_NE(p.status, -1);
  EXPECT_NE(p.message.find("line 2: key 'give-up-secs': unknown key (did you mean 'give-up-s'?)"),
            std::string::npos)
      << p.message;
}

TEST(StrictConfig, GarbageLineRefusedWithLine) {
  const Parsed p = parse("give-up-s = 5\n\nthis is not toml\n");
  EXPECT_NE(p.status, -1);
  EXPECT_NE(p.message.find("line 3: not TOML"), std::string::npos) << p.message;
}

TEST(StrictConfig, WrongTypeRefusedWithKeyAndLine) {
  const Parsed p = parse("queue-depth = \"deep\"\n");
  EXPECT_NE(p.message.find("line 1: key 'queue-depth': wants a non-negative integer, got a string"),
            std::string::npos)
      << p.message;
  EXPECT_NE(parse("queue-depth = 1.5\n").message.find("got a float"), std::string::npos);
  EXPECT_NE(parse("stream = \"yes\"\n").message.find("wants true or false"), std::string::npos);
}

TEST(StrictConfig, OutOfRangeValueRefusedWithKeyAndLineNotWrapped) {
  const Parsed p = parse("stream = false\ngive-up-s = 4294968\n");
  EXPECT_NE(p.status, -1);
  EXPECT_NE(p.message.find("line 2: key 'give-up-s'"), std::string::npos) << p.message;
  EXPECT_NE(p.message.find("not in range"), std::string::npos) << p.message;
  EXPECT_NE(
      parse("queue-depth = -5\n").message.find("line 1: key 'queue-depth': must not be negative"),
      std::string::npos);
}

TEST(StrictConfig, ValidFileSetsOptionsAndCommandLineWins) {
  Parsed p = parse("give-up-s = 5\nqueue-depth = 64\nstream = true\nvolume = [\"a\", \"b\"]\n");
  EXPECT_EQ(p.status, -1) << p.message;
  EXPECT_EQ(p.give_up_s, 5);
  EXPECT_EQ(p.queue_depth, 64u);
  EXPECT_TRUE(p.stream);
  EXPECT_EQ(p.volumes, (std::vector<std::string>{"a", "b"}));
  p = parse("give-up-s = 4294968\n", {"--give-up-s", "7"});  // the file's bad value is never used
  EXPECT_EQ(p.status, -1) << p.message;
  EXPECT_EQ(p.give_up_s, 7);
}

TEST(StrictConfig, ArrayForSingleOptionAndSectionsRefused) {
  EXPECT_NE(parse("give-up-s = [1, 2]\n").message.find("not repeatable"), std::string::npos);
  EXPECT_NE(parse("[edge]\ngive-up-s = 1\n").message.find("sections are not used"),
            std::string::npos);
  EXPECT_NE(parse("config = \"other.toml\"\n").message.find("unknown key"), std::string::npos);
}

}  // namespace
}  // namespace ferry::mgmt
