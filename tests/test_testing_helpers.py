"""fxopt.testing's FileCheck fails on every check it cannot apply, and docstring blocks match printed lines."""
import pytest

from fxopt.testing import CheckResult, FileCheckError, check_docstring, filecheck

TEXT = "%a = input\n%b = aten.relu(%a)\n%c = aten.neg(%b)\nreturn (%c,)"


def test_checks_that_hold():
    filecheck(TEXT, """
        CHECK: %b = aten.relu
        CHECK-NEXT: aten.neg(%b)
        CHECK-NOT: sigmoid
        CHECK: return
    """)


@pytest.mark.parametrize("checks, message", [
    ("CHECK: input\nCHECK-NOT: relu\nCHECK-NEXT: relu", "checks nothing"),
    ("CHECK-NEXT: input", "no CHECK before it"),
    ("CHECK: input\nCHECK:", "empty pattern"),
    ("CHEK: input", "unknown FileCheck directive"),
    ("CHECK: relu\nCHECK-NOT: neg", "CHECK-NOT"),
    ("CHECK: neg\nCHECK-NEXT: relu", "CHECK-NEXT"),
])
def test_checks_that_cannot_hold_or_cannot_apply_fail(checks, message):
    with pytest.raises((FileCheckError, ValueError), match=message):
        filecheck(TEXT, checks)


def test_docstring_blocks_match_printed_lines_with_wildcards():
    result = CheckResult(before="%x = input\n%w = const : f32[8, 4]\n%y = aten.t(%w) : f32[4, 8]",
                         after="%x = input\n%_fxopt_t = const : f32[123, 1]", stats={}, changed=True,
                         max_rel_error=0.0, diagnostics=[])
    doc = "Title.\n\nBefore::\n\n    %y = aten.t(%w) : f32[4, 8]\n\nAfter::\n\n    %_fxopt_t = const : f32[...]\n"
    check_docstring(result, doc)
    with pytest.raises(FileCheckError, match="not printed"):
        check_docstring(result, doc.replace("f32[4, 8]", "f32[8, 4]"))
