//! Bit-level helpers the token and keyword scanners share: loading a short
//! slice as one word, and finding where a run of one kind of byte ends,
//! eight bytes at a time.

/// `len` (at most 16) bytes of `buf` from `start`, byte `i` at bits `8i`,
/// zero above. Where 16 bytes are there to read this is one load and a mask:
/// copying a short variable-length slice into an array instead compiled to a
/// `memcpy` call per word, a tenth of the server's time on unique contexts.
#[inline]
pub(crate) fn pack_le(buf: &[u8], start: usize, len: usize) -> u128 {
    let mut a = [0u8; 16];
    match buf.get(start..start + 16) {
        Some(s) => a.copy_from_slice(s),
        None => {
            for (slot, &b) in a.iter_mut().zip(&buf[start..start + len.min(16)]) {
                *slot = b;
            }
        }
    }
    u128::from_le_bytes(a) & low_bytes(len)
}

/// A mask of the low `len` bytes of a `u128` (all of them from 16).
#[inline]
pub(crate) fn low_bytes(len: usize) -> u128 {
    if len >= 16 {
        u128::MAX
    } else {
        LOW_BYTES[len]
    }
}

/// `LOW_BYTES[n]` keeps the low `n` bytes of a `u128`: one load, where a
/// shift of a `u128` by a variable amount is a dozen instructions.
static LOW_BYTES: [u128; 16] = {
    let mut t = [0u128; 16];
    let mut n = 1;
    while n < 16 {
        t[n] = (1u128 << (8 * n)) - 1;
        n += 1;
    }
    t
};

/// The high bit of each byte of a `u64`.
pub(crate) const HIGH: u64 = 0x8080_8080_8080_8080;

/// `b` in every byte of a `u64`.
const fn splat(b: u8) -> u64 {
    b as u64 * 0x0101_0101_0101_0101
}

/// The ASCII bytes of a run that [`run_end`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// `a`–`z`.
    Lower,
    /// `A`–`Z`.
    Upper,
    /// `a`–`z` and `A`–`Z`.
    Alpha,
}

impl Run {
    #[inline(always)]
    pub(crate) fn holds(self, b: u8) -> bool {
        match self {
            Run::Lower => b.is_ascii_lowercase(),
            Run::Upper => b.is_ascii_uppercase(),
            Run::Alpha => b.is_ascii_alphabetic(),
        }
    }

    /// The high bit of each byte of `w` that is in the run, in all eight
    /// bytes at once. Below the high bit the sums cannot carry into the next
    /// byte, and a byte with its high bit set (not ASCII) is never in a run.
    #[inline(always)]
    pub(crate) fn lanes(self, w: u64) -> u64 {
        let (x, lo, hi) = match self {
            Run::Lower => (w & !HIGH, b'a', b'z'),
            Run::Upper => (w & !HIGH, b'A', b'Z'),
            Run::Alpha => ((w & !HIGH) | splat(0x20), b'a', b'z'),
        };
        let at_least_lo = x.wrapping_add(splat(0x80 - lo));
        let above_hi = x.wrapping_add(splat(0x7f - hi));
        at_least_lo & !above_hi & !w & HIGH
    }
}

/// Where the run of `run` bytes that starts at `i` in `b` ends. Eight bytes
/// are tested at a time: a loop of one byte per step mispredicted its exit
/// once for nearly every word, and words are most of a prompt.
#[inline(always)]
pub(crate) fn run_end(b: &[u8], mut i: usize, run: Run) -> usize {
    while let Some(chunk) = b.get(i..).and_then(|s| s.first_chunk::<8>()) {
        let outside = !run.lanes(u64::from_le_bytes(*chunk)) & HIGH;
        if outside != 0 {
            return i + (outside.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && run.holds(b[i]) {
        i += 1;
    }
    i
}
