"""Failure analysis (pure core): the pattern format and the shipped pattern set."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conveyor.controller.failures import FailureAnalyzer, default_patterns, read_pattern_file
from conveyor.core.failures import (
    MAX_LINE_LENGTH,
    MAX_LOG_BYTES,
    FailureAnalysis,
    FailurePattern,
    FailurePatternError,
    classify,
    load_pattern_file,
    load_patterns,
    merge_patterns,
)

STEP_FAILED = "step 'sh: make' in stage build failed with exit code 2"
EXIT_137 = "step 'sh: ./run.sh' in stage test failed with exit code 137"
BOLD, RED, RESET = "\x1b[1m", "\x1b[31m", "\x1b[0m"


def defaults() -> list[FailurePattern]:
    return list(default_patterns())


def run(log: str, state: str = "failed", cause: str | None = STEP_FAILED) -> FailureAnalysis:
    found = classify(textwrap.dedent(log), state, cause, defaults())
    assert found is not None
    return found


# ------------------------------------------------------------- shipped set


def test_shipped_patterns_load_and_have_unique_names() -> None:
    patterns = defaults()
    assert len(patterns) >= 25
    assert len({p.name for p in patterns}) == len(patterns)
    categories = {p.category for p in patterns}
    assert {
        "compile",
        "test",
        "out_of_memory",
        "dependency",
        "network",
        "infrastructure",
    } <= categories


def test_gcc_compile_error() -> None:
    found = run(
        f"""\
        {BOLD}==> [build] sh: make{RESET}
        gcc -O2 -c main.c -o main.o
        main.c: In function 'main':
        \x1b[01m\x1b[Kmain.c:7:5:\x1b[m\x1b[K \x1b[01;31m\x1b[Kerror: \x1b[m\x1b[K'y' undeclared
            7 |     y = 3;
              |     ^
        make: *** [Makefile:4: main.o] Error 1
        {RED}==> step failed with exit code 2{RESET}
        """
    )
    assert found.category == "compile"
    assert found.pattern == "gcc-clang-error"
    assert found.cause == "compile error in main.c:7: 'y' undeclared"
    assert found.line_number == 4
    assert found.line == "main.c:7:5: error: 'y' undeclared"  # colours removed
    assert found.offset is not None and found.offset > 0


@pytest.mark.parametrize(
    ("line", "pattern", "cause"),
    [
        (
            "src/App.java:12: error: cannot find symbol",
            "javac-error",
            "Java compile error in src/App.java line 12: cannot find symbol",
        ),
        (
            "[ERROR] /w/src/main/java/App.java:[12,5] cannot find symbol",
            "javac-error",
            "Java compile error in /w/src/main/java/App.java line 12: cannot find symbol",
        ),
        (
            "error[E0308]: mismatched types",
            "rustc-error",
            "Rust compile error E0308: mismatched types",
        ),
        (
            "./main.go:5:2: cannot use x (variable of type int) as string value in assignment",
            "go-compile-error",
            "Go compile error in ./main.go:5: cannot use x (variable of type int) as string "
            "value in assignment",
        ),
        (
            "SyntaxError: invalid syntax",
            "python-syntax-error",
            "Python SyntaxError: invalid syntax",
        ),
    ],
)
def test_other_compilers(line: str, pattern: str, cause: str) -> None:
    found = run(f"building\n{line}\nmore output\n")
    assert (found.category, found.pattern, found.cause) == ("compile", pattern, cause)


def test_failing_pytest_run() -> None:
    found = run(
        """\
        ============================= test session starts ==============================
        collected 3 items

        tests/test_app.py .F.                                                    [100%]

        =================================== FAILURES ===================================
        _________________________________ test_total ___________________________________
        E       assert 41 == 42
        =========================== short test summary info ============================
        FAILED tests/test_app.py::test_total - assert 41 == 42
        ========================= 1 failed, 2 passed in 0.05s ==========================
        """
    )
    assert found.category == "test"
    assert found.pattern == "pytest-failed-test"
    assert found.cause == "test failed: tests/test_app.py::test_total"
    assert found.line_number == 10


def test_pytest_summary_alone() -> None:
    found = run("===== 2 failed, 5 passed, 1 warning in 1.20s =====\n")
    assert (found.pattern, found.cause) == (
        "pytest-summary",
        "pytest: 2 failed, 5 passed, 1 warning in 1.20s",
    )


def test_failing_junit_run() -> None:
    found = run(
        """\
        [INFO] Running com.example.AppTest
        [ERROR] Tests run: 3, Failures: 1, Errors: 0, Skipped: 0, Time elapsed: 0.1 s <<< FAILURE!
        [INFO] Running com.example.OtherTest
        [INFO] Tests run: 2, Failures: 0, Errors: 0, Skipped: 0, Time elapsed: 0.1 s
        [INFO] Results:
        [ERROR] Tests run: 5, Failures: 1, Errors: 0, Skipped: 0
        [INFO] BUILD FAILURE
        """
    )
    assert found.category == "test"
    assert found.pattern == "junit-failures"
    assert found.cause == "JUnit: 1 failed and 0 errors of 5 tests"
    assert found.line_number == 6  # the summary, nearest the end


def test_passing_junit_lines_do_not_match() -> None:
    log = "Tests run: 5, Failures: 0, Errors: 0, Skipped: 0\n"
    assert classify(log, "failed", STEP_FAILED, defaults()) is None


@pytest.mark.parametrize(
    ("log", "pattern"),
    [
        ("--- FAIL: TestAdd (0.00s)\nFAIL\nFAIL\texample.com/m\t0.01s\n", "go-test-failed"),
        ("Tests:       1 failed, 4 passed, 5 total\n", "jest-failed"),
    ],
)
def test_other_test_runners(log: str, pattern: str) -> None:
    found = run(log)
    assert (found.category, found.pattern) == ("test", pattern)


def test_oom_kill_with_exit_137() -> None:
    log = """\
        ==> [test] sh: ./run.sh
        loading data set
        ./run.sh: line 3:  4242 Killed                  python eat_memory.py
        ==> step failed with exit code 137
        """
    found = run(log, cause=EXIT_137)
    assert found.category == "out_of_memory"
    assert found.pattern == "oom-killed"
    assert "exit code 137" in (found.cause or "")
    assert found.line_number == 3
    # "Killed" with another exit code is not an OOM kill.
    assert classify(textwrap.dedent(log), "failed", STEP_FAILED, defaults()) is None


def test_sigkill_without_message_is_out_of_memory() -> None:
    found = run("==> step killed by signal SIGKILL\n", cause=EXIT_137)
    assert (found.category, found.pattern) == ("out_of_memory", "sigkill-exit-137")


def test_java_out_of_memory() -> None:
    found = run(
        """\
        [INFO] Running com.example.BigTest
        Exception in thread "main" java.lang.OutOfMemoryError: Java heap space
        \tat com.example.Big.fill(Big.java:10)
        [ERROR] Tests run: 1, Failures: 0, Errors: 1, Skipped: 0
        """
    )
    # The root cause wins over the symptom (the JUnit error) that comes after it.
    assert found.category == "out_of_memory"
    assert found.pattern == "java-out-of-memory"
    assert found.cause == "Java out of memory: java.lang.OutOfMemoryError: Java heap space"


def test_python_memory_error_and_enomem() -> None:
    assert run("E   MemoryError\n").cause == "Python out of memory (MemoryError)"
    found = run("fork: Cannot allocate memory\n")
    assert (found.category, found.pattern) == ("out_of_memory", "cannot-allocate-memory")


def test_timeout_comes_from_the_state() -> None:
    found = classify(
        "==> step timed out after 5m\n", "timed_out", "step 'sh: x' in stage s timed out", []
    )
    assert found == FailureAnalysis("timeout", "step 'sh: x' in stage s timed out")
    found = classify("", "timed_out", None, defaults())
    assert found is not None and found.category == "timeout" and found.pattern is None


def test_patterns_apply_to_failed_builds_only_by_default() -> None:
    # A compile error printed by a build that then timed out is still a timeout.
    found = classify("main.c:1:1: error: x\n", "timed_out", None, defaults())
    assert found is not None and found.category == "timeout"


def test_agent_lost() -> None:
    found = classify("main.c:1:1: error: x\n", "lost", "agent lost", defaults())
    assert found == FailureAnalysis("agent_lost", "agent lost")
    # A lost build that is not retried ends failed; its cause says what happened.
    found = classify("main.c:1:1: error: x\n", "failed", "agent lost", defaults())
    assert found is not None and found.category == "agent_lost"


def test_dns_failure() -> None:
    found = run(
        "Cloning into 'repo'...\n"
        "fatal: unable to access 'https://git.example.com/r/': Could not resolve host: "
        "git.example.com\n"
    )
    assert found.category == "network"
    assert found.pattern == "dns-could-not-resolve-host"
    assert found.cause == "DNS lookup failed: could not resolve host git.example.com"


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("npm ERR! 404 Not Found - GET https://registry.npmjs.org/nope", "npm-not-found"),
        ("ERROR: No matching distribution found for nope==1.0", "pip-no-matching-distribution"),
    ],
)
def test_dependency_failures(line: str, pattern: str) -> None:
    found = run(f"installing\n{line}\n")
    assert (found.category, found.pattern) == ("dependency", pattern)


def test_connection_refused_is_network_but_after_tests() -> None:
    assert run("curl: (7) Failed to connect to db port 5432: Connection refused\n").category == (
        "network"
    )
    # In a failing test run the failing test is reported, not the noise around it.
    found = run("E   ConnectionRefusedError: Connection refused\nFAILED tests/t.py::test_db\n")
    assert found.pattern == "pytest-failed-test"


def test_disk_full() -> None:
    found = run(
        """\
        Step 3/7 : RUN make
        cp: error writing 'out/big.bin': No space left on device
        make: *** [Makefile:9: all] Error 1
        """
    )
    assert found.category == "infrastructure"
    assert found.pattern == "disk-full"
    assert found.line_number == 2


def test_permission_denied_in_workspace() -> None:
    found = run("rm: cannot remove '/srv/agent/workspace/app-12/build/x.o': Permission denied\n")
    assert found.category == "infrastructure"
    assert (
        found.cause == "permission denied in the workspace: /srv/agent/workspace/app-12/build/x.o"
    )
    # Outside the workspace (e.g. a script that is not executable) it is not infrastructure.
    assert classify("bash: ./deploy.sh: Permission denied\n", "failed", None, defaults()) is None


def test_not_failed_builds_are_not_classified() -> None:
    for state in ("succeeded", "cancelled", "running", "queued"):
        assert classify("main.c:1:1: error: x\n", state, None, defaults()) is None


def test_no_match_is_none() -> None:
    assert classify("all good\nreally\n", "failed", STEP_FAILED, defaults()) is None


# ---------------------------------------------------------- priority rules


def test_first_pattern_in_file_order_wins_over_later_lines() -> None:
    patterns = load_patterns(
        """
        patterns:
          - {name: first, category: compile, regex: 'alpha', cause: a}
          - {name: second, category: test, regex: 'beta', cause: b}
        """
    )
    found = classify("alpha 1\nbeta\nalpha 2\nbeta\n", "failed", None, patterns)
    assert found is not None
    assert (found.pattern, found.line, found.line_number) == ("first", "alpha 2", 3)


def test_user_pattern_overrides_default(tmp_path: Path) -> None:
    log = "main.c:3:1: error: vendored/legacy.h not found\n"
    assert run(log).category == "compile"
    user = tmp_path / "patterns.yml"
    user.write_text(
        textwrap.dedent(
            """\
            patterns:
              - name: legacy-vendoring
                category: dependency
                regex: 'error: (?P<path>vendored/\\S+) not found'
                cause: "vendored file missing: {path} (run ./vendor.sh)"
              - name: gcc-clang-error    # replaces the shipped pattern of that name
                category: compile
                regex: 'error: '
                cause: "C error"
              - name: disk-full
                enabled: false
            """
        )
    )
    analyzer = FailureAnalyzer.load(user)
    names = [p.name for p in analyzer.patterns]
    assert names[:2] == ["legacy-vendoring", "gcc-clang-error"]
    assert names.count("gcc-clang-error") == 1 and "disk-full" not in names
    assert len(names) == len(default_patterns()) + 1 - 1
    found = classify(log, "failed", None, analyzer.patterns)
    assert found is not None
    assert found.category == "dependency"
    assert found.cause == "vendored file missing: vendored/legacy.h (run ./vendor.sh)"
    assert classify("No space left on device\n", "failed", None, analyzer.patterns) is None


def test_pattern_for_timed_out_builds_and_cause_regex() -> None:
    patterns = load_patterns(
        """
        patterns:
          - name: lock-wait
            category: infrastructure
            regex: 'waiting for lock (?P<lock>\\S+)'
            cause: "stuck waiting for lock {lock}"
            applies_to_states: [timed_out]
          - name: segfault
            category: crash
            regex: 'core dumped'
            cause_regex: 'exit code 139$'
            cause: "segmentation fault"
        """
    )
    found = classify("waiting for lock /var/lib/dpkg/lock\n", "timed_out", None, patterns)
    assert found is not None and found.cause == "stuck waiting for lock /var/lib/dpkg/lock"
    assert classify("waiting for lock x\n", "failed", None, patterns) is None
    crash = classify("Segmentation fault (core dumped)\n", "failed", "... exit code 139", patterns)
    assert crash is not None and crash.category == "crash"
    assert classify("Segmentation fault (core dumped)\n", "failed", STEP_FAILED, patterns) is None


def test_merge_patterns_order() -> None:
    d = load_patterns("patterns:\n  - {name: a, category: test, regex: a, cause: a}\n")
    u, disabled = load_pattern_file(
        "patterns:\n  - {name: b, category: test, regex: b, cause: b}\n"
        "  - {name: a, enabled: false}\n"
    )
    assert [p.name for p in merge_patterns(u, d, disabled)] == ["b"]
    assert [p.name for p in merge_patterns(u, d)] == ["b", "a"]


# -------------------------------------------------------------- validation


def test_bad_regex_names_the_pattern() -> None:
    with pytest.raises(FailurePatternError) as info:
        load_patterns(
            """
            patterns:
              - {name: fine, category: test, regex: 'ok', cause: ok}
              - {name: broken-one, category: test, regex: 'error: (unclosed', cause: x}
            """,
            "my-patterns.yml",
        )
    message = str(info.value)
    assert "my-patterns.yml" in message
    assert "'broken-one'" in message
    assert "invalid regular expression in 'regex'" in message
    assert "missing ), unterminated subpattern at position 7" in message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{category: test, regex: x, cause: y}", "pattern #1: 'name' is required"),
        ("{name: p, regex: x, cause: y}", "pattern 'p': 'category' is required"),
        ("{name: p, category: Test, regex: x, cause: y}", "'category' is required"),
        ("{name: p, category: test, cause: y}", "pattern 'p': 'regex' is required"),
        ("{name: p, category: test, regex: x}", "pattern 'p': 'cause' is required"),
        (
            "{name: p, category: test, regex: '(?P<a>x)', cause: '{b}'}",
            "'cause' uses {b}, which is not a named group of the regex (known: a, line)",
        ),
        (
            "{name: p, category: test, regex: '(?P<a>x)', cause: '{a.__class__}'}",
            "'cause' uses {a.__class__}",
        ),
        ("{name: p, category: test, regex: '(?P<a>x)', cause: '{a!r}'}", "conversion"),
        ("{name: p, category: test, regex: x, cause: '{'}", "invalid 'cause' template"),
        ("{name: p, category: test, regex: x, cause: y, colour: red}", "unknown field(s) colour"),
        (
            "{name: p, category: test, regex: x, cause: y, applies_to_states: [succeeded]}",
            "'applies_to_states' must be a non-empty list of: failed, lost, timed_out",
        ),
        ("{name: p, category: test, regex: x, cause: y, cause_regex: '['}", "'cause_regex'"),
        ("{name: p, enabled: true}", "'enabled' may only be false"),
    ],
)
def test_validation_errors(entry: str, expected: str) -> None:
    with pytest.raises(FailurePatternError) as info:
        load_patterns(f"patterns:\n  - {entry}\n")
    assert expected in str(info.value)


def test_duplicate_names_and_file_shape() -> None:
    with pytest.raises(FailurePatternError, match="pattern 'a': duplicate name"):
        load_patterns(
            "patterns:\n  - {name: a, category: t, regex: x, cause: y}\n"
            "  - {name: a, category: t, regex: x, cause: y}\n"
        )
    with pytest.raises(FailurePatternError, match="one key, 'patterns'"):
        load_patterns("- {name: a}\n")
    with pytest.raises(FailurePatternError, match="not valid YAML"):
        load_patterns("patterns: [\n")
    assert load_patterns("") == []


def test_unreadable_user_file(tmp_path: Path) -> None:
    with pytest.raises(FailurePatternError, match="cannot read failure patterns file"):
        read_pattern_file(tmp_path / "missing.yml", default_patterns())


# ------------------------------------------------------------------ bounds


def test_huge_log_is_bounded_to_its_end() -> None:
    filler = "INFO compiling module foo/bar/baz with -O2 -Wall ok\n"
    early = "main.c:1:1: error: too early to be seen\n"
    late = "FAILED tests/test_x.py::test_late\n"
    body = filler * (10_000_000 // len(filler))
    log = early + body + late + filler * 10
    assert len(log) > 10_000_000
    found = classify(log, "failed", STEP_FAILED, defaults())
    assert found is not None
    assert found.pattern == "pytest-failed-test"
    assert found.line_number is None  # only the tail was examined
    assert found.offset == len(early) + len(body)  # exact byte offset in the whole log
    # Only the tail is examined: the early compile error (first in pattern order) is not seen.
    only_early = classify(early + body, "failed", STEP_FAILED, defaults())
    assert only_early is None
    assert len(body) > MAX_LOG_BYTES


def test_offset_of_a_tail_counts_from_log_offset() -> None:
    # A caller that read the last part of the log passes where it starts; the first,
    # partial line is ignored.
    tail = "rror: not a whole line\nmain.c:2:3: error: boom\n"
    found = classify(tail, "failed", None, defaults(), log_offset=1000)
    assert found is not None
    assert (found.line_number, found.offset) == (None, 1000 + tail.index("main.c"))


def test_pathological_line_is_ignored_safely() -> None:
    patterns = load_patterns(
        # Exponential backtracking on a long line of 'a's without a final 'b'.
        "patterns:\n  - {name: evil, category: test, regex: '^(a+)+b', cause: evil}\n"
    )
    huge = "a" * (MAX_LINE_LENGTH + 1)
    assert classify(huge + "\n", "failed", None, patterns) is None  # returns at once
    # The same long line with a real error after it: the error is still found.
    found = classify(huge + "\nmain.c:1:2: error: real\n", "failed", None, defaults())
    assert found is not None and found.line_number == 2
    # A long line that contains an error is not matched at all.
    long_error = "x" * MAX_LINE_LENGTH + " main.c:1:2: error: hidden"
    assert classify(long_error + "\n", "failed", None, defaults()) is None


def test_invalid_utf8_and_control_characters_are_made_printable() -> None:
    raw = b"main.c:1:2: error: bad \xff byte\x00 here\n"
    found = classify(raw.decode("utf-8", "surrogateescape"), "failed", None, defaults())
    assert found is not None
    assert found.line == "main.c:1:2: error: bad \ufffd byte here"
    assert found.cause == "compile error in main.c:1: bad \ufffd byte here"


def test_carriage_return_progress_lines() -> None:
    found = run("Downloading 10%\rDownloading 100%\rnpm ERR! 404 Not Found - GET x\r\n")
    assert found.pattern == "npm-not-found"
    assert found.line == "npm ERR! 404 Not Found - GET x"


def test_detail_is_json_ready() -> None:
    found = run("main.c:1:2: error: x\n")
    assert found.detail() == {
        "pattern": "gcc-clang-error",
        "line_number": 1,
        "line": "main.c:1:2: error: x",
        "offset": 0,
    }
