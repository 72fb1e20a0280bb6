"""Skip-negotiate mode checks a neighbor op's send/receive pattern inside the
op's agreement allreduce: every rank ANDs in its row of a send and a receive
bit matrix. The core's encoding and decoding, run for all ranks at once
without MPI (bluefog.common.basics.pattern_matrix_check), against a reference
computed here, on world sizes whose matrices span one word and many."""
import random
import re

import pytest

from bluefog.common.basics import pattern_matrix_check


def problems(srcs, dsts):
    """The mismatches CheckPattern names, as (kind, a, b) triples."""
    out = set()
    for r, ds in enumerate(dsts):
        for d in ds:
            if r not in srcs[d]:
                out.add(("sends", r, d))
    for r, ss in enumerate(srcs):
        for s in ss:
            if r not in dsts[s]:
                out.add(("receives", r, s))
    return out


def named(text):
    found = set()
    for a, b in re.findall(r"rank (\d+) sends to rank (\d+), but", text):
        found.add(("sends", int(a), int(b)))
    for a, b in re.findall(r"rank (\d+) receives from rank (\d+), but", text):
        found.add(("receives", int(a), int(b)))
    more = re.search(r"and (\d+) more", text)
    return found, int(more.group(1)) if more else 0


def mirrored(size, rng, density):
    dsts = [sorted(d for d in range(size) if d != r and rng.random() < density) for r in range(size)]
    srcs = [sorted(s for s in range(size) if r in dsts[s]) for r in range(size)]
    for lists in (srcs, dsts):
        for x in lists:
            rng.shuffle(x)  # any order: the matrices do not keep it
    return srcs, dsts


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8, 9, 31, 33, 64, 100])
def test_mirrored_lists_pass_and_every_broken_one_is_named(size):
    rng = random.Random(size)
    for trial in range(20):
        srcs, dsts = mirrored(size, rng, density=rng.choice([0.1, 0.5, 0.9]))
        assert pattern_matrix_check(srcs, dsts) == ""
        if size < 2:
            continue
        # Break the pattern: drop or add edges at random on one side only.
        for _ in range(rng.randint(1, 3)):
            r = rng.randrange(size)
            lists = rng.choice([srcs, dsts])
            others = [x for x in range(size) if x != r and x not in lists[r]]
            if lists[r] and (not others or rng.random() < 0.5):
                lists[r].remove(rng.choice(lists[r]))
            elif others:
                lists[r].append(rng.choice(others))
        expected = problems(srcs, dsts)
        text = pattern_matrix_check(srcs, dsts)
        if not expected:
            assert text == ""
            continue
        assert text.startswith("send/receive pattern mismatch: "), text
        shown, more = named(text)
        assert shown <= expected, (shown - expected, text)
        assert len(shown) == min(len(expected), 6) and len(shown) + more == len(expected), text


def test_lists_that_do_not_fit_the_matrices_are_left_to_the_gather():
    ok_src, ok_dst = [[1], [0]], [[1], [0]]
    assert pattern_matrix_check(ok_src, ok_dst) == ""
    assert pattern_matrix_check([[1, 1], [0]], ok_dst) is None   # listed twice
    assert pattern_matrix_check([[0], [0]], ok_dst) is None      # itself
    assert pattern_matrix_check(ok_src, [[2], [0]]) is None      # out of range
    assert pattern_matrix_check(ok_src, [[-1], [0]]) is None


def test_world_size_limits():
    assert pattern_matrix_check([[]] * 1024, [[]] * 1024) == ""
    with pytest.raises(ValueError):
        pattern_matrix_check([[]] * 1025, [[]] * 1025)
