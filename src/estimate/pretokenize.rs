//! An exact fast path for the o200k and cl100k pre-tokenizers on ASCII text.
//!
//! BPE tokenizers first split text with a regular expression, then encode each
//! piece. With `bpe-openai`, the Unicode-aware regex is about 80% of the time
//! of a count. Agent prompts are mostly ASCII, where every class in those
//! regexes is a simple byte test, so this module reimplements the two
//! patterns' leftmost-first semantics by hand for ASCII and feeds the pieces
//! to the same BPE. The counts are identical; the differential tests in
//! `tests` compare it with the regex on real prompts and on random text.
//!
//! Text with non-ASCII characters is cut into segments at boundaries no regex
//! match can cross (after a newline that is followed by an ASCII character
//! that is neither white space nor `/`); ASCII segments take the fast path and
//! the others the regex, so one emoji does not slow down a whole document.
//!
//! The o200k pattern, alternatives in priority order:
//!
//! 1. `[^\r\n\p{L}\p{N}]?[\p{Lu}…]*[\p{Ll}…]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
//! 2. `[^\r\n\p{L}\p{N}]?[\p{Lu}…]+[\p{Ll}…]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
//! 3. `\p{N}{1,3}`
//! 4. ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
//! 5. `\s*[\r\n]+`
//! 6. `\s+(?!\S)`
//! 7. `\s+`
//!
//! cl100k differs in three places: contractions come first and stand alone,
//! letters are one class (`[^\r\n\p{L}\p{N}]?\p{L}+`), and alternative 4 ends
//! in `[\r\n]*` (no `/`).

use super::{run_end, Run, HIGH};
use crate::rules::Encoding;

const UPPER: u8 = 1;
const LOWER: u8 = 2;
const DIGIT: u8 = 4;
const SPACE: u8 = 8;
const NEWLINE: u8 = 16;

/// Byte classes for ASCII. `\s` in ASCII is 0x09..=0x0D and 0x20.
static CLASS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_lowercase() {
            LOWER
        } else if c.is_ascii_digit() {
            DIGIT
        } else if c == b'\n' || c == b'\r' {
            SPACE | NEWLINE
        } else if (c >= 0x09 && c <= 0x0d) || c == b' ' {
            SPACE
        } else {
            0
        };
        i += 1;
    }
    t
};

#[inline]
fn class(b: u8) -> u8 {
    CLASS[(b & 0x7f) as usize]
}

#[inline]
fn is_letter(b: u8) -> bool {
    class(b) & (UPPER | LOWER) != 0
}

/// `[^\s\p{L}\p{N}]`: punctuation, symbols and control characters.
#[inline]
fn is_punct(b: u8) -> bool {
    class(b) == 0
}

/// `[^\r\n\p{L}\p{N}]`: what may stand before a word.
#[inline]
fn is_prefix(b: u8) -> bool {
    class(b) & (UPPER | LOWER | DIGIT | NEWLINE) == 0
}

/// The length of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`,
/// any case) at `p`, or 0.
#[inline]
fn contraction(b: &[u8], p: usize) -> usize {
    if b.get(p) != Some(&b'\'') {
        return 0;
    }
    let lower = |i: usize| b.get(i).map(u8::to_ascii_lowercase);
    match lower(p + 1) {
        Some(b's' | b't' | b'm' | b'd') => 2,
        Some(b'r') if lower(p + 2) == Some(b'e') => 3,
        Some(b'v') if lower(p + 2) == Some(b'e') => 3,
        Some(b'l') if lower(p + 2) == Some(b'l') => 3,
        _ => 0,
    }
}

/// The end of the pre-token that starts at `p` in ASCII text `b`. Inlined,
/// so that each encoding's loop in `count_ascii` has its own copy, with the
/// `o200k` tests settled at compile time.
#[inline(always)]
fn next_piece(b: &[u8], p: usize, o200k: bool) -> usize {
    let n = b.len();
    if !o200k {
        let c = contraction(b, p);
        if c > 0 {
            return p + c;
        }
    }
    // Words, with an optional leading non-letter (alternatives 1 and 2).
    let start = if is_prefix(b[p]) && p + 1 < n && is_letter(b[p + 1]) {
        p + 1
    } else {
        p
    };
    if is_letter(b[start]) {
        let mut e = start;
        if o200k {
            // [A-Z]*[a-z]+ or, failing that, [A-Z]+[a-z]*: both end after the
            // run of capitals and the run of small letters that follows it.
            e = cased_word_end(b, e);
            return e + contraction(b, e);
        }
        return run_end(b, e, Run::Alpha);
    }
    // Numbers, up to three digits.
    if class(b[p]) == DIGIT {
        let mut e = p + 1;
        while e < n && e < p + 3 && class(b[e]) == DIGIT {
            e += 1;
        }
        return e;
    }
    // Punctuation, with an optional leading space and trailing newlines.
    let q = if b[p] == b' ' && p + 1 < n && is_punct(b[p + 1]) {
        p + 1
    } else {
        p
    };
    if is_punct(b[q]) {
        let mut e = q;
        while e < n && is_punct(b[e]) {
            e += 1;
        }
        while e < n && (class(b[e]) & NEWLINE != 0 || (o200k && b[e] == b'/')) {
            e += 1;
        }
        return e;
    }
    // White space: here b[p] is white space.
    let mut run_end = p;
    let mut last_newline = None;
    while run_end < n && class(b[run_end]) & SPACE != 0 {
        if class(b[run_end]) & NEWLINE != 0 {
            last_newline = Some(run_end);
        }
        run_end += 1;
    }
    if let Some(nl) = last_newline {
        // \s*[\r\n]+ : up to and including the run's last newline.
        return nl + 1;
    }
    if run_end == n || run_end - p == 1 {
        // \s+(?!\S) at the end of text, or a lone space before a word.
        return run_end;
    }
    // \s+(?!\S) backs off one so the last space can lead the next word.
    run_end - 1
}

/// The end of `[A-Z]*[a-z]*` from `i`. Both runs usually end within eight
/// bytes, which one load settles; longer ones go on a run at a time.
#[inline(always)]
fn cased_word_end(b: &[u8], i: usize) -> usize {
    if let Some(chunk) = b.get(i..).and_then(|s| s.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let not_upper = !Run::Upper.lanes(w) & HIGH;
        if not_upper != 0 {
            let upper = not_upper.trailing_zeros() / 8;
            let not_lower = !Run::Lower.lanes(w) & HIGH & (u64::MAX << (8 * upper));
            if not_lower != 0 {
                return i + (not_lower.trailing_zeros() / 8) as usize;
            }
            return run_end(b, i + 8, Run::Lower);
        }
    }
    run_end(b, run_end(b, i, Run::Upper), Run::Lower)
}

/// Pieces up to this many bytes have their BPE count memoised per thread.
const MEMO_PIECE_BYTES: usize = 15;
/// Slots in each thread's memo: a power of two. 16,384 slots of 16 bytes
/// are 256 KiB, which stays in a core's L2 cache.
const MEMO_SLOTS: usize = 1 << 14;

/// Where a slot keeps its piece's count: bits 4–6 of the key's last byte,
/// which holds the piece's length (at most 15, bits 0–3) and the encoding
/// (bit 7).
const COUNT_SHIFT: u32 = 124;
const COUNT_MASK: u128 = 0b111 << COUNT_SHIFT;
/// The largest count a slot holds; a piece of more tokens is not memoised.
const MAX_MEMO_COUNT: u32 = 7;

/// BPE counts of short pieces, direct-mapped: a piece's key picks one slot,
/// which holds the last piece that mapped there, with its count in spare
/// bits of the key. A hit is one load and one comparison; a miss is one BPE
/// run that takes the slot. A hash map here (cleared whole when it filled)
/// made the estimate stage of a new 6k-token context take 255 µs in
/// `cargo bench --bench context`; a direct-mapped table took 136 µs.
struct Memo {
    slots: Box<[u128]>,
}

impl Memo {
    fn new() -> Memo {
        Memo {
            slots: vec![0; MEMO_SLOTS].into_boxed_slice(),
        }
    }

    fn slot(key: u128) -> usize {
        let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - MEMO_SLOTS.trailing_zeros())) as usize
    }

    /// The count of the piece with `key`, computed by `count` if not held.
    /// Keys are never 0 (they carry the piece's length), so empty slots miss.
    #[inline]
    fn get_or(&mut self, key: u128, count: impl FnOnce() -> u32) -> u32 {
        let i = Memo::slot(key) & (MEMO_SLOTS - 1);
        let held = self.slots[i];
        if held & !COUNT_MASK == key {
            return ((held & COUNT_MASK) >> COUNT_SHIFT) as u32;
        }
        let n = count();
        if n <= MAX_MEMO_COUNT {
            self.slots[i] = key | (n as u128) << COUNT_SHIFT;
        }
        n
    }
}

thread_local! {
    /// Words repeat: " the", " of", "Answer" cost one lookup after their first
    /// BPE run. The keys are word fragments of at most 15 bytes, held in this
    /// thread's memory only: never logged or written anywhere, and replaced
    /// as other pieces take their slots.
    static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(Memo::new());
}

/// The memo key of the piece `b[start..start + len]` (at most 15 bytes).
fn pack(b: &[u8], start: usize, len: usize, o200k: bool) -> u128 {
    // The last byte holds the length and the encoding; ASCII pieces never use it.
    let tag = len as u128 | if o200k { 0x80 } else { 0 };
    super::pack_le(b, start, len) | tag << 120
}

fn count_ascii(bpe: &bpe_openai::byte_pair_encoding::BytePairEncoding, b: &[u8], o200k: bool) -> u64 {
    if o200k {
        count_pieces::<true>(bpe, b)
    } else {
        count_pieces::<false>(bpe, b)
    }
}

fn count_pieces<const O200K: bool>(bpe: &bpe_openai::byte_pair_encoding::BytePairEncoding, b: &[u8]) -> u64 {
    let o200k = O200K;
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let mut total = 0u64;
        let mut p = 0;
        while p < b.len() {
            let e = next_piece(b, p, o200k);
            let piece = &b[p..e];
            // Every byte is a token of its own in these byte-level encodings,
            // so a one-byte piece (a space, a comma) needs no lookup.
            total += if piece.len() == 1 {
                1
            } else if piece.len() <= MEMO_PIECE_BYTES {
                memo.get_or(pack(b, p, piece.len(), o200k), || bpe.count(piece) as u32) as u64
            } else {
                bpe.count(piece) as u64
            };
            p = e;
        }
        total
    })
}

/// Counts `text` in `encoding`: the fast path for ASCII segments, the regex
/// for the rest. Always equal to `bpe_openai`'s (and so tiktoken's) count.
pub fn count(encoding: Encoding, text: &str) -> u64 {
    let (tok, o200k) = match encoding {
        Encoding::O200k => (bpe_openai::o200k_base(), true),
        Encoding::Cl100k => (bpe_openai::cl100k_base(), false),
    };
    let b = text.as_bytes();
    if b.is_ascii() {
        return count_ascii(&tok.bpe, b, o200k);
    }
    let mut total = 0u64;
    let mut start = 0;
    let mut i = 0;
    while i + 1 < b.len() {
        // A boundary no match crosses: after '\n', before an ASCII byte that
        // is neither white space nor '/'.
        if b[i] == b'\n' && b[i + 1] < 0x80 && class(b[i + 1]) & SPACE == 0 && b[i + 1] != b'/' {
            total += segment(tok, &text[start..=i], o200k);
            start = i + 1;
        }
        i += 1;
    }
    total + segment(tok, &text[start..], o200k)
}

fn segment(tok: &bpe_openai::Tokenizer, s: &str, o200k: bool) -> u64 {
    if s.is_ascii() {
        count_ascii(&tok.bpe, s.as_bytes(), o200k)
    } else {
        tok.count(s) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_keeps_counts_up_to_seven_in_the_key_and_recounts_others() {
        let mut m = Memo::new();
        let hello = pack(b"hello", 0, 5, true);
        let mut runs = 0;
        let mut count = |n: u32| {
            runs += 1;
            n
        };
        assert_eq!(m.get_or(hello, || count(3)), 3);
        assert_eq!(m.get_or(hello, || count(99)), 3, "held");
        assert_eq!(runs, 1);
        let bangs = pack(b"!!!!!!!!!!!!!!!", 0, 15, true);
        assert_eq!(m.get_or(bangs, || 9), 9);
        assert_eq!(m.get_or(bangs, || 10), 10, "a count above 7 is not held");
        // The encoding is part of the key, and a held count never leaks into it.
        let cl100k = pack(b"hello", 0, 5, false);
        assert_eq!(m.get_or(cl100k, || 2), 2);
        assert_eq!(m.get_or(cl100k, || 5), 2);
        assert_eq!(pack(b"xhello", 1, 5, true), hello);
    }

    fn reference(e: Encoding, s: &str) -> u64 {
        match e {
            Encoding::O200k => bpe_openai::o200k_base().count(s) as u64,
            Encoding::Cl100k => bpe_openai::cl100k_base().count(s) as u64,
        }
    }

    fn pieces(e: Encoding, s: &str) -> Vec<String> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut p = 0;
        while p < b.len() {
            let end = next_piece(b, p, e == Encoding::O200k);
            out.push(s[p..end].to_string());
            p = end;
        }
        out
    }

    fn regex_pieces(e: Encoding, s: &str) -> Vec<String> {
        let tok = match e {
            Encoding::O200k => bpe_openai::o200k_base(),
            Encoding::Cl100k => bpe_openai::cl100k_base(),
        };
        tok.split(s).map(str::to_string).collect()
    }

    #[test]
    fn splits_like_the_regex_on_tricky_ascii() {
        let cases = [
            "Hello World",
            "HELLO world",
            "HelloWorld",
            "don't I'M we'll they'VE",
            "'sfoo",
            "  leading",
            "x   y",
            "trailing   ",
            "a\n\n  b",
            "a \n\t\n c",
            "...hello",
            "$hello",
            "a//b\n/c",
            " {}\n\n",
            "12345 6",
            " 123",
            "\t{",
            "x\x0by",
            "\x00\x01ab",
            "a  \r\n",
            "ABCdef ABC's",
            "Q: What?\nA. 4\nB. 5\nAnswer:",
            "",
        ];
        for e in Encoding::ALL {
            for c in cases {
                assert_eq!(pieces(e, c), regex_pieces(e, c), "{e:?} on {c:?}");
                assert_eq!(count(e, c), reference(e, c), "{e:?} on {c:?}");
            }
        }
    }

    #[test]
    fn a_cased_word_ends_where_its_two_runs_end() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for case in 0..5_000 {
            let b: Vec<u8> = (0..case % 37)
                .map(|_| {
                    let r = crate::estimate::tests::xorshift(&mut state);
                    let alphabet = b"aAzZqQ @[`{'\xc1\xe1";
                    alphabet[(r >> 8) as usize % alphabet.len()]
                })
                .collect();
            for i in 0..=b.len() {
                let want = run_end(&b, run_end(&b, i, Run::Upper), Run::Lower);
                assert_eq!(cased_word_end(&b, i), want, "from {i} in {b:?}");
            }
        }
    }

    #[test]
    fn matches_the_regex_on_random_text() {
        // A deterministic xorshift over an alphabet dense in the characters
        // the patterns treat specially, including non-ASCII ones.
        let alphabet: Vec<char> = "aAzZsStTrReEvVmMlLdD09 \t\n\r\x0b\x0c'/.,{}-_$\x00é€\u{a0}\u{2028}ßΣ漢😀"
            .chars()
            .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // SWITCHYARD_PRETOKENIZE_CASES raises the count for a longer run by hand.
        let cases = std::env::var("SWITCHYARD_PRETOKENIZE_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        for _ in 0..cases {
            let len = (next() % 40) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for e in Encoding::ALL {
                assert_eq!(count(e, &s), reference(e, &s), "{e:?} on {s:?}");
                if s.is_ascii() {
                    assert_eq!(pieces(e, &s), regex_pieces(e, &s), "{e:?} on {s:?}");
                }
            }
        }
    }

    /// Real prompts: the shipped fixture always, and the whole replay data
    /// set beside the repository when it is there.
    #[test]
    fn matches_the_regex_on_real_prompts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixture = std::fs::read_to_string(root.join("tests/fixtures/mmlu-prompts.jsonl"))
            .expect("tests/fixtures/mmlu-prompts.jsonl ships with the repository");
        let full = std::fs::read_to_string(root.join("../shared/bench-data/replay/mmlu.jsonl")).unwrap_or_default();
        let mut checked = 0;
        for line in fixture.lines().chain(full.lines().step_by(7)) {
            let v: serde_json::Value = serde_json::from_str(line).expect("jsonl");
            let prompt = v["prompt"].as_str().expect("prompt");
            for e in Encoding::ALL {
                assert_eq!(count(e, prompt), reference(e, prompt), "{e:?} on {prompt:?}");
            }
            checked += 1;
        }
        assert!(checked >= 100, "only {checked} prompts checked");
    }
}
