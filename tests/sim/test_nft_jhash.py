"""The kernel's jhash() (include/linux/jhash.h), as nft_jhash_eval uses it, on the values Bob
Jenkins' lookup3.c prints in its own self-test (driver5: hashlittle). The wire lab cases in
test_nf_cases.py check the whole `jhash … mod N seed S` against the kernel's packets."""

import pytest

from tracer.sim.nft_expr import jhash


@pytest.mark.parametrize("key, initval, expected", [
    (b"", 0, 0xDEADBEEF),
    (b"", 0xDEADBEEF, 0xBD5B7DDE),
    (b"Four score and seven years ago", 0, 0x17770551),  # 30 bytes: two 12-byte rounds and a tail
    (b"Four score and seven years ago", 1, 0xCD628161),
])
def test_jhash_gives_lookup3s_published_values(key, initval, expected):
    assert jhash(key, initval) == expected
