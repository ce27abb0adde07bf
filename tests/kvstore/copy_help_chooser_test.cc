// CopyHelpChooser: large copies go helped or alone by what each mode took
// lately in this process (kvstore/checksum_helper.h). Fed made-up times, it
// must measure both modes, go over to the faster, try the other ever less
// often while that keeps losing, and leave a mode that slowed down at once.
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/checksum_helper.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

using Mode = CopyHelpChooser::Mode;
using ::strata::kvstore::testing::TestSeed;

constexpr size_t kBytes = size_t{4} << 20;

// One whole trial as CopyVerifiedBlock runs it: its first copy is not
// timed, the others are recorded with `nanos` for the trial's mode.
Mode RunTrial(CopyHelpChooser& chooser, uint64_t alone_nanos,
              uint64_t helped_nanos) {
  const CopyHelpChooser::Choice first = chooser.Choose();
  EXPECT_FALSE(first.counted) << "a trial's first copy pays for the mode "
                                 "before it and is not counted";
  for (int i = 1; i < CopyHelpChooser::kTrialCopies; ++i) {
    const CopyHelpChooser::Choice choice = chooser.Choose();
    EXPECT_EQ(choice.trial, first.trial);
    EXPECT_EQ(choice.mode, first.mode);
    EXPECT_TRUE(choice.counted);
    chooser.Record(choice, kBytes,
                   choice.mode == Mode::kAlone ? alone_nanos : helped_nanos);
  }
  return first.mode;
}

// The number of favoured trials between consecutive trials of the other
// mode, over `trials` trials.
std::vector<int> RunsBetweenTries(CopyHelpChooser& chooser, Mode favoured,
                                  int trials, uint64_t alone_nanos,
                                  uint64_t helped_nanos) {
  std::vector<int> runs;
  int run = 0;
  for (int t = 0; t < trials; ++t) {
    if (RunTrial(chooser, alone_nanos, helped_nanos) == favoured) {
      ++run;
    } else {
      runs.push_back(run);
      run = 0;
    }
  }
  return runs;
}

// A fresh chooser's first two trials, helped faster: it favours helped.
void FavourHelped(CopyHelpChooser& chooser) {
  RunTrial(chooser, 300'000, 200'000);
  RunTrial(chooser, 300'000, 200'000);
  ASSERT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, MeasuresHelpedThenAloneBeforeChoosing) {
  CopyHelpChooser chooser;
  EXPECT_EQ(RunTrial(chooser, 300'000, 200'000), Mode::kHelped);
  EXPECT_EQ(RunTrial(chooser, 300'000, 200'000), Mode::kAlone);
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, AHelperThatLosesFromTheStartIsTriedOnlyLater) {
  CopyHelpChooser chooser;
  EXPECT_EQ(RunTrial(chooser, 300'000, 1'500'000), Mode::kHelped);
  EXPECT_EQ(RunTrial(chooser, 300'000, 1'500'000), Mode::kAlone);
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone);
  const std::vector<int> runs =
      RunsBetweenTries(chooser, Mode::kAlone, 20, 300'000, 1'500'000);
  ASSERT_GE(runs.size(), 1u);
  EXPECT_EQ(runs[0], CopyHelpChooser::kMinExploreEvery);
}

TEST(CopyHelpChooser, TriesTheLosingModeEverLessOften) {
  CopyHelpChooser chooser;
  ASSERT_NO_FATAL_FAILURE(FavourHelped(chooser));
  // Helped keeps winning: alone is tried after 4, 8, ... favoured trials,
  // never more rarely than every kMaxExploreEvery.
  const std::vector<int> runs =
      RunsBetweenTries(chooser, Mode::kHelped, 400, 300'000, 200'000);
  const std::vector<int> expected = {4, 8, 16, 32, 64, 64};
  ASSERT_GE(runs.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(runs[i], expected[i]) << "gap " << i;
  }
  EXPECT_EQ(chooser.ExploreEvery(), CopyHelpChooser::kMaxExploreEvery);
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, LeavesAFavouredModeThatSlowedDownAtOnce) {
  CopyHelpChooser chooser;
  ASSERT_NO_FATAL_FAILURE(FavourHelped(chooser));
  // The helper's CPU moved away (the VM's slow phase): one trial of it is
  // enough to go back to hashing alone.
  EXPECT_EQ(RunTrial(chooser, 300'000, 1'500'000), Mode::kHelped);
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone);
  EXPECT_EQ(chooser.ExploreEvery(), CopyHelpChooser::kMinExploreEvery);
  // Then the helper is tried again after kMinExploreEvery trials alone;
  // once it is fast again, it wins back.
  const std::vector<int> runs =
      RunsBetweenTries(chooser, Mode::kAlone, 5, 300'000, 200'000);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0], CopyHelpChooser::kMinExploreEvery);
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, SwitchesOnlyForAClearGain) {
  CopyHelpChooser chooser;
  RunTrial(chooser, 300'000, 290'000);  // Within kSwitchMargin.
  RunTrial(chooser, 300'000, 290'000);
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone);
  RunsBetweenTries(chooser, Mode::kAlone, 100, 300'000, 290'000);
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone);
}

TEST(CopyHelpChooser, KeepsTheHelperForAGainWithinTheMargin) {
  CopyHelpChooser chooser;
  ASSERT_NO_FATAL_FAILURE(FavourHelped(chooser));
  // Alone becomes 3% faster than helped: not enough to switch.
  RunsBetweenTries(chooser, Mode::kHelped, 100, 194'000, 200'000);
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, ATrialOfTwoTimesTakesTheirMean) {
  CopyHelpChooser chooser;
  // Helped's trial gets two times, 100 and 300 us (the third is dropped),
  // and ends by its limit on choices: helped measures 200 us.
  const CopyHelpChooser::Choice first = chooser.Choose();
  ASSERT_EQ(first.mode, Mode::kHelped);
  chooser.Record(chooser.Choose(), kBytes, 100'000);
  chooser.Record(chooser.Choose(), kBytes, 300'000);
  CopyHelpChooser::Choice next = chooser.Choose();
  while (next.trial == first.trial) next = chooser.Choose();
  ASSERT_EQ(next.mode, Mode::kAlone);
  // Alone at 250 us: helped's 200 wins by the margin (with the upper of the
  // two, 300, it would not).
  for (int i = 1; i < CopyHelpChooser::kTrialCopies; ++i) {
    chooser.Record(chooser.Choose(), kBytes, 250'000);
  }
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, TheTrialsMedianIgnoresOneSlowCopy) {
  CopyHelpChooser chooser;
  // Helped's trial with one copy preempted for 50 ms.
  const CopyHelpChooser::Choice first = chooser.Choose();
  ASSERT_EQ(first.mode, Mode::kHelped);
  for (int i = 1; i < CopyHelpChooser::kTrialCopies; ++i) {
    const CopyHelpChooser::Choice choice = chooser.Choose();
    chooser.Record(choice, kBytes, i == 2 ? 50'000'000 : 200'000);
  }
  EXPECT_EQ(RunTrial(chooser, 300'000, 200'000), Mode::kAlone);
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, IgnoresStaleAndUncountedRecords) {
  CopyHelpChooser chooser;
  // Helped's trial, 300 us a copy; its uncounted first copy claims 1 ns.
  const CopyHelpChooser::Choice uncounted = chooser.Choose();
  ASSERT_EQ(uncounted.mode, Mode::kHelped);
  ASSERT_FALSE(uncounted.counted);
  const CopyHelpChooser::Choice helped = chooser.Choose();
  for (int i = 0; i < 20; ++i) chooser.Record(uncounted, kBytes, 1);
  for (int i = 2; i < CopyHelpChooser::kTrialCopies; ++i) {
    chooser.Record(chooser.Choose(), kBytes, 300'000);
  }
  chooser.Record(helped, kBytes, 300'000);  // Completes helped's trial.
  // Alone's trial, 200 us a copy, with late records of helped's trial
  // claiming 1 s amid it.
  const CopyHelpChooser::Choice alone = chooser.Choose();
  ASSERT_EQ(alone.mode, Mode::kAlone);
  ASSERT_NE(alone.trial, helped.trial);
  for (int i = 1; i < CopyHelpChooser::kTrialCopies; ++i) {
    chooser.Record(helped, kBytes, 1'000'000'000);
    chooser.Record(chooser.Choose(), kBytes, 200'000);
  }
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone);
}

TEST(CopyHelpChooser, ATrialWhoseTimesNeverComeIsGivenUp) {
  CopyHelpChooser chooser;
  const CopyHelpChooser::Choice first = chooser.Choose();
  // Every copy of this trial found the helper lent (none recorded).
  CopyHelpChooser::Choice next = first;
  int choices = 1;
  while (next.trial == first.trial && choices < 1000) {
    next = chooser.Choose();
    ++choices;
  }
  EXPECT_NE(next.trial, first.trial);
  EXPECT_LE(choices, 4 * CopyHelpChooser::kTrialCopies + 1);
  // Helped measured nothing: alone, also unmeasured, goes next.
  EXPECT_EQ(next.mode, Mode::kAlone);
  EXPECT_FALSE(next.counted);
}

// Runs `copies` copies in which a helped choice gets the helper only once
// in `lent_every` (the others find it lent elsewhere: they run alone,
// untimed, and are Unused); returns how many helped choices there were.
int RunWithTheHelperMostlyLent(CopyHelpChooser& chooser, int copies,
                               int lent_every, uint64_t alone_nanos,
                               uint64_t helped_nanos) {
  int helped_choices = 0;
  for (int i = 0; i < copies; ++i) {
    const CopyHelpChooser::Choice choice = chooser.Choose();
    if (choice.mode == Mode::kHelped && helped_choices++ % lent_every != 0) {
      chooser.Unused(choice);
      continue;
    }
    chooser.Record(choice, kBytes,
                   choice.mode == Mode::kAlone ? alone_nanos : helped_nanos);
  }
  return helped_choices;
}

TEST(CopyHelpChooser, ASlowHelperThatIsOftenLentStillLoses) {
  // The helper is lent elsewhere three times in four, and 5x slower when a
  // copy gets it: the chooser must still measure both modes, go with
  // alone, and keep helped's trials rare (a few per exploration).
  CopyHelpChooser chooser;
  const int copies = 4 * CopyHelpChooser::kMaxCopiesBetweenTrials;
  const int helped_choices =
      RunWithTheHelperMostlyLent(chooser, copies, 4, 300'000, 1'500'000);
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone);
  EXPECT_LT(helped_choices, copies / 4);
}

TEST(CopyHelpChooser, HelpedCopiesThatRarelyGetTheHelperAreStillMeasured) {
  // The helper is lent elsewhere fifteen times in sixteen; when a copy gets
  // it, helping is faster. Those rare copies must still make up helped's
  // trials (the lent ones are Unused, not counted), so helped wins.
  CopyHelpChooser chooser;
  RunWithTheHelperMostlyLent(chooser,
                             4 * CopyHelpChooser::kMaxCopiesBetweenTrials, 16,
                             300'000, 200'000);
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, AHelperLentElsewhereAllAlongGivesAloneItsTurn) {
  CopyHelpChooser chooser;
  const CopyHelpChooser::Choice first = chooser.Choose();
  ASSERT_EQ(first.mode, Mode::kHelped);
  chooser.Unused(first);
  CopyHelpChooser::Choice next = first;
  int choices = 1;
  while (next.trial == first.trial && choices < 1000) {
    next = chooser.Choose();
    ++choices;
    if (next.trial == first.trial) chooser.Unused(next);
  }
  EXPECT_NE(next.trial, first.trial);
  // Ended by the limit on choices of any kind, not on counted ones (which
  // the Unused ones do not add to).
  EXPECT_EQ(choices, 16 * CopyHelpChooser::kTrialCopies + 1);
  EXPECT_EQ(next.mode, Mode::kAlone);
}

TEST(CopyHelpChooser, OneCopysTimeDecidesNothing) {
  CopyHelpChooser chooser;
  // Helped's trial: one time comes (1 ns a byte, absurdly fast), the rest
  // are dropped; the trial is given up.
  const CopyHelpChooser::Choice first = chooser.Choose();
  ASSERT_EQ(first.mode, Mode::kHelped);
  chooser.Record(chooser.Choose(), kBytes, 1);
  CopyHelpChooser::Choice next = chooser.Choose();
  while (next.trial == first.trial) next = chooser.Choose();
  // Alone's trial; helped, still unmeasured, comes next and loses.
  ASSERT_EQ(next.mode, Mode::kAlone);
  for (int i = 1; i < CopyHelpChooser::kTrialCopies; ++i) {
    chooser.Record(chooser.Choose(), kBytes, 300'000);
  }
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone)
      << "the one fast helped time must not have counted";
  EXPECT_EQ(RunTrial(chooser, 300'000, 1'500'000), Mode::kHelped);
  EXPECT_EQ(chooser.Favoured(), Mode::kAlone);
}

TEST(CopyHelpChooser, CopiersOnManyThreadsAtOnceLeaveAWorkingChooser) {
  const uint64_t seed = TestSeed();
  CopyHelpChooser chooser;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      for (int i = 0; i < 20'000; ++i) {
        // A busy chooser answers at once (never waits) and drops the time.
        chooser.Record(chooser.Choose(), kBytes, 100'000 + rng() % 300'000);
      }
    });
  }
  for (auto& t : threads) t.join();
  const int every = chooser.ExploreEvery();
  EXPECT_GE(every, CopyHelpChooser::kMinExploreEvery);
  EXPECT_LE(every, CopyHelpChooser::kMaxExploreEvery);
  // Whatever the race left, one copier whose helped copies are clearly
  // faster is helped again within two rounds of trials of either mode.
  for (int i = 0; i < 3 * CopyHelpChooser::kMaxCopiesBetweenTrials; ++i) {
    const CopyHelpChooser::Choice choice = chooser.Choose();
    chooser.Record(choice, kBytes,
                   choice.mode == Mode::kAlone ? 300'000 : 200'000);
  }
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped);
}

TEST(CopyHelpChooser, AForkedChildMeasuresAfresh) {
  // The process's chooser of an unused kind, brought to favour helped.
  CopyHelpChooser& chooser =
      CopyHelpChooser::Process(CopyHelpChooser::kKinds - 1);
  ASSERT_NO_FATAL_FAILURE(FavourHelped(chooser));
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(10);  // A try-lock left held would make Favoured() spin.
    // In the child: nothing measured, so helped's trial comes first and
    // alone is favoured meanwhile. Exit codes say which check failed.
    if (chooser.Favoured() != Mode::kAlone) _exit(1);
    const CopyHelpChooser::Choice first = chooser.Choose();
    if (first.mode != Mode::kHelped || first.counted) _exit(2);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: the child kept the parent's favoured mode; 2: its first trial "
         "was not a fresh helped one";
  EXPECT_EQ(chooser.Favoured(), Mode::kHelped) << "the parent's is kept";
}

TEST(ChecksumHelperPolicy, ReadFromTheEnvironmentValue) {
  using Policy = ChecksumHelper::Policy;
  EXPECT_EQ(ChecksumHelper::PolicyFromEnvironment(nullptr), Policy::kMeasured);
  EXPECT_EQ(ChecksumHelper::PolicyFromEnvironment(""), Policy::kMeasured);
  EXPECT_EQ(ChecksumHelper::PolicyFromEnvironment("1"), Policy::kMeasured);
  EXPECT_EQ(ChecksumHelper::PolicyFromEnvironment("0"), Policy::kOff);
  EXPECT_EQ(ChecksumHelper::PolicyFromEnvironment("always"), Policy::kAlways);
}

}  // namespace
}  // namespace strata::kvstore
