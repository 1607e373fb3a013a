"""Python twins of the data plane's hash functions (ext/wire/hepwire.pxd: hep_hash64, hep_mix64).

FNV-1a 64 hashes the string keys of the rule tables and the call key; splitmix64 turns
(call-key hash, target) into a rendezvous weight. Tests check both sides agree.
"""

MASK = 0xFFFFFFFFFFFFFFFF


def hash64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK
    return h


def mix64(x: int) -> int:
    x &= MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    return x


def target_seed(host: str, port: int) -> int:
    """A target's identity in rendezvous hashing: its configured address, not its position, so
    adding or removing one target only moves the calls that belonged to it."""
    return hash64(f"{host}:{port}".encode())


def rendezvous(key_hash: int, seeds: list[int]) -> int:
    """Index of the target with the highest weight for this call key hash."""
    best, best_w = -1, -1
    for i, s in enumerate(seeds):
        w = mix64(key_hash ^ s)
        if w > best_w:
            best, best_w = i, w
    return best
