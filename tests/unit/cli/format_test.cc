// Trace specs: the probe, the quoted format and its arguments in one argument, checked when
// parsed, and the messages rendered from the agent's records.
#include "output/format.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace usprobe::cli {
namespace {

TraceSpec parsed(std::string_view text) {
  auto spec = parse_trace_spec(text);
  EXPECT_TRUE(spec.has_value()) << text << ": " << (spec ? "" : spec.error().message);
  return spec.value_or(TraceSpec{});
}

std::string error_of(std::string_view text) {
  auto spec = parse_trace_spec(text);
  EXPECT_FALSE(spec.has_value()) << text;
  return spec ? "" : spec.error().message;
}

TraceEvent event(std::initializer_list<uint64_t> args) {
  TraceEvent e;
  size_t i = 0;
  for (uint64_t a : args) e.args[i++] = a;
  return e;
}

TEST(TraceSpec, ProbeAlone) {
  TraceSpec s = parsed("libc:malloc");
  EXPECT_EQ(s.probe, "libc:malloc");
  EXPECT_FALSE(s.format.has_value());
  EXPECT_EQ(render_message(s.format, event({1})), "");
  EXPECT_TRUE(render_args(s.format, event({1})).empty());
}

TEST(TraceSpec, FormatAndArguments) {
  TraceSpec s = parsed(R"(exe:greet "%s has %d", arg0, arg1)");
  EXPECT_EQ(s.probe, "exe:greet");
  ASSERT_TRUE(s.format.has_value());
  EXPECT_EQ(s.format->string_mask(), 1u);
  TraceEvent e = event({0x1000, 3});
  e.strings[0] = "alice";
  EXPECT_EQ(render_message(s.format, e), "alice has 3");
  EXPECT_EQ(render_args(s.format, e).dump(), R"(["alice",3])");
}

TEST(TraceSpec, ADemangledProbeWithBlanksIsAllThatComesBeforeTheFormat) {
  TraceSpec s = parsed(R"(exe:ns::scale(int, char const*) const "%d", arg1)");
  EXPECT_EQ(s.probe, "exe:ns::scale(int, char const*) const");
  ASSERT_TRUE(s.format.has_value());
  EXPECT_EQ(s.format->conversions[0].arg, 1u);
  EXPECT_EQ(parsed("exe:ns::scale(int)").probe, "exe:ns::scale(int)");
}

TEST(TraceSpec, SingleQuotesAndNoSpaceAfterCommas) {
  TraceSpec s = parsed("libc:write 'fd=%d n=%lu',arg0,arg2");
  ASSERT_TRUE(s.format.has_value());
  EXPECT_EQ(s.format->conversions[1].arg, 2u);
  EXPECT_EQ(render_message(s.format, event({1, 0, 12})), "fd=1 n=12");
}

TEST(TraceSpec, FormatWithoutArguments) {
  TraceSpec s = parsed(R"(libc:free "freed 100%%")");
  EXPECT_EQ(render_message(s.format, event({})), "freed 100%");
}

TEST(TraceSpec, StringMaskHasABitPerStringArgument) {
  TraceSpec s = parsed(R"(exe:f "%s %d %s", arg2, arg0, arg5)");
  EXPECT_EQ(s.format->string_mask(), (1u << 2) | (1u << 5));
}

TEST(Render, SignedIntIsTheLow32BitsSigned) {
  TraceSpec s = parsed(R"(exe:f "%d %i", arg0, arg0)");
  TraceEvent e = event({0xffff'ffff});  // -1 in a 32-bit register, zero-extended
  EXPECT_EQ(render_message(s.format, e), "-1 -1");
  EXPECT_EQ(render_args(s.format, e).dump(), "[-1,-1]");
}

TEST(Render, LongConversionsTakeAll64Bits) {
  TraceSpec s = parsed(R"(exe:f "%ld %lld %lu %lx %llx", arg0, arg0, arg0, arg1, arg1)");
  TraceEvent e = event({static_cast<uint64_t>(-5), 0x1'0000'0000});
  EXPECT_EQ(render_message(s.format, e), "-5 -5 18446744073709551611 100000000 100000000");
  EXPECT_EQ(render_args(s.format, e).dump(), "[-5,-5,18446744073709551611,4294967296,4294967296]");
}

TEST(Render, HexUnsignedPointerAndChar) {
  TraceSpec s = parsed(R"(exe:f "%x %X %u %p %c", arg0, arg0, arg1, arg2, arg3)");
  TraceEvent e = event({0x1'dead'beef, 0xffff'fffe, 0x7ffd'1234'5678, 'A'});
  EXPECT_EQ(render_message(s.format, e), "deadbeef DEADBEEF 4294967294 0x7ffd12345678 A");
  EXPECT_EQ(render_args(s.format, e).dump(),
            R"([3735928559,3735928559,4294967294,140724908873336,"A"])");
}

TEST(Render, WidthsAndFlagsPassThrough) {
  TraceSpec s =
      parsed(R"(exe:f "[%5d][%-5d][%08x][%-8s][%8s][%.2s]", arg0, arg0, arg1, arg2, arg2, arg2)");
  TraceEvent e = event({42, 0xbeef, 0x1000});
  e.strings[2] = "abc";
  EXPECT_EQ(render_message(s.format, e), "[   42][42   ][0000beef][abc     ][     abc][ab]");
}

TEST(Render, UnreadableStringShowsItsAddress) {
  TraceSpec s = parsed(R"(exe:f "name=%s", arg1)");
  TraceEvent e = event({0, 0x10});
  e.bad_strings = 1u << 1;
  EXPECT_EQ(render_message(s.format, e), "name=<bad 0x10>");
  // In JSON no string that looks like data: null, and the reason beside it.
  EXPECT_EQ(render_args(s.format, e).dump(), "[null]");
  EXPECT_EQ(render_errors(s.format, e).dump(), R"({"arg1":"bad address 0x10"})");
  e.args[1] = 0;
  EXPECT_EQ(render_errors(s.format, e).dump(), R"({"arg1":"null pointer"})");
  e.bad_strings = 0;
  EXPECT_EQ(render_errors(s.format, e).dump(), "{}");
}

TEST(Render, EscapesInTheFormat) {
  TraceSpec t = parsed(R"(exe:f "a\tb\"c\\ %d", arg0)");
  EXPECT_EQ(render_message(t.format, event({7})), "a\tb\"c\\ 7");
}

TEST(TraceSpecErrors, ArgumentCountMustMatchConversions) {
  EXPECT_EQ(error_of(R"(exe:greet "%s has %d", arg0)"),
            R"(bad format in 'exe:greet "%s has %d", arg0': 2 conversions but 1 argument)");
  EXPECT_EQ(error_of(R"(exe:greet "hi", arg0)"),
            R"(bad format in 'exe:greet "hi", arg0': 0 conversions but 1 argument)");
}

TEST(TraceSpecErrors, UnknownConversionsAndArguments) {
  EXPECT_NE(error_of(R"(exe:f "%q", arg0)").find("unknown conversion '%q'"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%ls", arg0)").find("unknown conversion '%ls'"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%*d", arg0)").find("unknown conversion"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%d", arg6)").find("'arg6' is not an argument"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%d", rdi)").find("'rdi' is not an argument"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%d", arg0,)").find("'' is not an argument"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%d)").find("no closing \" quote"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f %d, arg0)").find("expected a quoted format"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%d" arg0)").find("expected ','"), std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "50%", arg0)").find("incomplete conversion"), std::string::npos);
}

TEST(TraceSpec, AReturnProbeTakesRetvalAndTheEntrysArguments) {
  auto spec = parse_trace_spec(R"x(uretprobe:libc:open "%s -> %d [%s]", arg0, retval, retval)x");
  ASSERT_TRUE(spec) << spec.error().message;
  ASSERT_TRUE(spec->format);
  EXPECT_EQ(spec->format->string_mask(), 1u | 1u << agent::kRetvalArg);
  EXPECT_EQ(spec->format->conversions[1].arg, agent::kRetvalArg);
  auto entry = parse_trace_spec(R"(libc:getenv "%s", retval)");
  ASSERT_FALSE(entry);
  EXPECT_NE(entry.error().message.find("'retval' is known at a return only"), std::string::npos)
      << entry.error().message;
  EXPECT_FALSE(parse_trace_spec(R"(uretprobe:libc:getenv "%s", arg6)"));
}

TEST(TraceSpec, AUsdtProbeTakesTheNotesTwelveArguments) {
  auto spec = parse_trace_spec(R"(usdt:/usr/bin/prog:p:n "%d %s %u", arg0, arg9, arg11)");
  ASSERT_TRUE(spec) << spec.error().message;
  ASSERT_TRUE(spec->format);
  EXPECT_EQ(spec->format->conversions[1].arg, 9u);
  EXPECT_EQ(spec->format->conversions[2].arg, 11u);
  EXPECT_EQ(spec->format->string_mask(), 1u << 9);
  TraceEvent e = event({7});
  e.args[9] = 0x1000;
  e.strings[9] = "nine";
  e.args[11] = 0xffff'ffff'ffff'fff5;
  EXPECT_EQ(render_message(spec->format, e), "7 nine 4294967285");
  for (const char *arg : {"arg12", "arg01", "arg+1", "arg 1", "arg100"})
    EXPECT_NE(error_of(fmt::format(R"(usdt:/usr/bin/prog:p:n "%d", {})", arg))
                  .find(fmt::format("'{}' is not an argument (arg0 to arg11)", arg)),
              std::string::npos)
        << arg;
  // A function has six argument registers; its return probe, retval besides.
  EXPECT_NE(error_of(R"(exe:f "%d", arg11)").find("(arg0 to arg5)"), std::string::npos);
  EXPECT_NE(error_of(R"(uretprobe:exe:f "%d", arg7)").find("(arg0 to arg5, or retval)"),
            std::string::npos);
}

TEST(Render, AStringLongerThanTheCopyEndsInTheMarker) {
  TraceSpec s = parsed(R"(exe:f "[%s] [%-8s] [%8s] [%.2s] [%.3s]", arg0, arg0, arg0, arg0, arg0)");
  TraceEvent e = event({0x1000});
  e.strings[0] = "abc";  // what the agent copied of a longer string
  e.cut_strings = 1u << 0;
  // The precision cuts as in C, and a string cut by it needs no marker; the width pads the whole.
  EXPECT_EQ(render_message(s.format, e), "[abc...] [abc...  ] [  abc...] [ab] [abc...]");
  EXPECT_EQ(render_args(s.format, e).dump(), R"(["abc...","abc...","abc...","abc...","abc..."])");
  e.cut_strings = 0;
  EXPECT_EQ(render_message(s.format, e), "[abc] [abc     ] [     abc] [ab] [abc]");
}

TEST(Render, WidthsApplyToPlaceholdersAsToStrings) {
  TraceSpec s = parsed(R"(exe:f "[%8s] [%-12s] [%.2s]", arg0, arg1, arg1)");
  TraceEvent e = event({0, 0x10});
  e.bad_strings = (1u << 0) | (1u << 1);
  // Padded like any string; never cut by a precision into something that could be a real value.
  EXPECT_EQ(render_message(s.format, e), "[  (null)] [<bad 0x10>  ] [<bad 0x10>]");
}

TEST(TraceSpecErrors, WidthsAndPrecisionsBeyondTheLimitAreRefused) {
  EXPECT_EQ(error_of(R"(exe:f "%.2147483648s", arg0)"),
            R"(bad format in 'exe:f "%.2147483648s", arg0': precision 2147483648 in )"
            R"('%.2147483648s' is over the limit of 4096)");
  EXPECT_EQ(error_of(R"(exe:f "a %-4097d b", arg0)"),
            R"(bad format in 'exe:f "a %-4097d b", arg0': width 4097 in '%-4097d' is over the )"
            R"(limit of 4096)");
  EXPECT_NE(error_of(R"(exe:f "%99999999999999999999x", arg0)").find("width 99999999999999999999"),
            std::string::npos);
  EXPECT_NE(error_of(R"(exe:f "%.5000lu", arg0)").find("precision 5000 in '%.5000lu'"),
            std::string::npos);
  // The limit itself is fine, and so is "%.s" (precision 0, as in C).
  TraceSpec s = parsed(R"(exe:f "%4096d|%.4096s|%.s|", arg0, arg1, arg1)");
  TraceEvent e = event({7, 0x1000});
  e.strings[1] = "xyz";
  std::string m = render_message(s.format, e);
  EXPECT_EQ(m.size(), 4096u + 6);
  EXPECT_TRUE(m.ends_with("7|xyz||")) << m.substr(4090);
}

}  // namespace
}  // namespace usprobe::cli
