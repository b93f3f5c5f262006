//! The features the understanding model reads, all from one pass over the
//! text: hashed word n-grams and the structural counts ([`DENSE_NAMES`]).
//! The trainer and the server read requests through this one extractor.

use crate::hashing::{fmix64 as mix, fnv1a_step as fnv_step, FNV1A_OFFSET as FNV_OFFSET};

/// Hashed n-gram slots.
pub const BUCKETS: usize = 1 << 15;
pub(super) const MASK: u64 = (BUCKETS as u64) - 1;
/// Words read from a request, from its start.
pub const MAX_WORDS: usize = 1024;
const SEED_UNI: u64 = 0x5357_4954_4348_5931;
const SEED_BI: u64 = 0x5357_4954_4348_5932;
const SEED_STEM: u64 = 0x5357_4954_4348_5933;
const SEED_LEAD: u64 = 0x5357_4954_4348_5934;
/// Words longer than this also give their first `STEM` bytes as a gram, so
/// that "summarise", "summarize" and "summary" share one.
pub(super) const STEM: usize = 5;
/// The first words also give a gram of their own: the ask usually leads.
pub(super) const LEAD_WORDS: u32 = 6;
/// The gram scheme, recorded in the model file: a file trained on other
/// grams than this build extracts is refused.
pub const GRAMS: &str = "fnv1a-mix: words+bigrams+stem5+lead6";

/// The names of the structural features, in order (recorded in the model
/// file, so that a file and a build that disagree are caught).
pub const DENSE_NAMES: [&str; 14] = [
    "log_words",
    "digit_share",
    "log_numbers",
    "log_operators",
    "log_code_markers",
    "log_list_items",
    "log_questions",
    "log_latex",
    "non_ascii_share",
    "log_lines",
    "latin_word_len",
    "upper_share",
    "mean_rarity",
    "rare_share",
];
pub const DENSE: usize = DENSE_NAMES.len();

/// The shipped model, relative to the repository. The binary embeds it, so
/// a rule table that names no other file needs none on disk.
pub const SHIPPED: &str = "models/understanding.json";
pub(super) static SHIPPED_TEXT: &str = include_str!("../../models/understanding.json");

/// Bins of the score's calibration and of the per-workflow quantile sketch:
/// bin `i` holds scores in `[i/SCORE_BINS, (i+1)/SCORE_BINS)`.
pub const SCORE_BINS: usize = 100;

/// The sketch bin of a score.
pub fn score_bin(score: f64) -> usize {
    if score.is_nan() {
        return 0;
    }
    ((score * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1)
}

/// A request as the models read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// Distinct n-gram slots (a short request's sorted).
    pub grams: Vec<u32>,
    /// The value each gram carries.
    pub gram_value: f32,
    pub dense: [f32; DENSE],
}

// Words are hashed as they are read, with FNV-1a over their lower-cased
// bytes and a 64-bit finaliser (`crate::hashing`), the first [`STEM`] bytes'
// state kept for the stem gram: xxh3 per word, stem and pair was 40% of a
// 1k-token read.

/// A word's hash, from its FNV state.
#[inline(always)]
pub(super) fn word_of(state: u64) -> u64 {
    mix(state ^ SEED_UNI)
}

/// The grams one word gives: (slot, what it is) for `drivers`; the
/// extractor pushes the same slots.
#[inline(always)]
pub(super) fn stem_slot(state_at_stem: u64) -> u32 {
    (mix(state_at_stem ^ SEED_STEM) & MASK) as u32
}

#[inline(always)]
pub(super) fn lead_slot(h: u64) -> u32 {
    (mix(h ^ SEED_LEAD) & MASK) as u32
}

#[inline(always)]
pub(super) fn pair_slot(prev: u64, h: u64) -> u32 {
    (mix(prev.rotate_left(23) ^ h ^ SEED_BI) & MASK) as u32
}

/// The FNV state of a whole lower-cased word, and of its first [`STEM`]
/// bytes when it is longer than that and a character ends there.
pub(super) fn hash_word(w: &str) -> (u64, Option<u64>) {
    let (mut h, mut stem) = (FNV_OFFSET, None);
    for (i, &b) in w.as_bytes().iter().enumerate() {
        h = fnv_step(h, b);
        if i + 1 == STEM && w.len() > STEM && w.is_char_boundary(STEM) {
            stem = Some(h);
        }
    }
    (h, stem)
}

/// A word's rarity slot in the frequency table (its unigram slot).
pub fn rarity_slot(word: &str) -> usize {
    (word_of(hash_word(word).0) & MASK) as usize
}

/// Reads `text` once. `rarity` is the model's table (Zipf frequency × 10 per
/// slot, 0 for a word not in the table); empty reads every word as unknown.
pub fn extract(text: &str, rarity: &[u8]) -> Extracted {
    extract_all(&[text], rarity)
}

/// The counts of one read, and the word being read.
#[derive(Default)]
struct Reader {
    words: u32,
    /// Words in the Latin script and their bytes: word length and rarity
    /// are read from these alone, since the frequency table is English's
    /// and a word of another script is neither long nor rare for it.
    latin_words: u32,
    latin_word_bytes: u32,
    upper: u32,
    letters: u32,
    non_ascii: u32,
    digits: u32,
    numbers: u32,
    operators: u32,
    code: u32,
    lists: u32,
    questions: u32,
    latex: u32,
    lines: u32,
    rarity_sum: u32,
    rare: u32,
    known: u32,
    /// The word being read: its length in bytes, FNV state, the state at
    /// its stem, whether it is letters only, whether it is in the Latin
    /// script.
    len: usize,
    state: u64,
    stem: Option<u64>,
    alpha: bool,
    latin: bool,
    prev: Option<u64>,
    at_line_start: bool,
    prev_byte: u8,
    in_number: bool,
}

/// Each gram once: a short request's few are sorted (cheaper than clearing
/// a bitset of every slot), a long one's are filtered through the bitset.
fn distinct(grams: &mut Vec<u32>) {
    if grams.len() <= 256 {
        grams.sort_unstable();
        grams.dedup();
        return;
    }
    let mut seen = [0u64; BUCKETS / 64];
    grams.retain(|&slot| {
        let (w, bit) = ((slot >> 6) as usize, 1u64 << (slot & 63));
        let new = seen[w] & bit == 0;
        seen[w] |= bit;
        new
    });
}

impl Reader {
    #[inline(always)]
    fn push_byte(&mut self, b: u8) {
        if self.len == 0 {
            self.state = FNV_OFFSET;
            self.stem = None;
            self.alpha = true;
            self.latin = true;
        }
        self.state = fnv_step(self.state, b);
        self.len += 1;
    }

    /// After a whole character's lower-cased bytes: a stem ends here when
    /// the word has just reached [`STEM`] bytes.
    #[inline(always)]
    fn char_done(&mut self) {
        if self.len == STEM {
            self.stem = Some(self.state);
        }
    }

    #[inline(always)]
    fn finish(&mut self, rarity: &[u8], grams: &mut Vec<u32>) {
        if self.len == 0 {
            return;
        }
        let len = std::mem::take(&mut self.len);
        self.words += 1;
        if self.latin {
            self.latin_words += 1;
            self.latin_word_bytes += len as u32;
        }
        if self.words as usize > MAX_WORDS {
            return;
        }
        let h = word_of(self.state);
        let mut push = |slot: u32| grams.push(slot);
        push((h & MASK) as u32);
        if let (Some(st), true) = (self.stem, len > STEM) {
            push(stem_slot(st));
        }
        if self.words <= LEAD_WORDS {
            push(lead_slot(h));
        }
        if let Some(p) = self.prev {
            push(pair_slot(p, h));
        }
        self.prev = Some(h);
        if !rarity.is_empty() && self.alpha && self.latin {
            let z = rarity[(h & MASK) as usize];
            if z == 0 {
                self.rare += 1;
            } else {
                self.known += 1;
                self.rarity_sum += u32::from(z);
                if z < 30 {
                    self.rare += 1;
                }
            }
        }
    }

    /// A character that is not part of a word.
    #[inline(always)]
    fn other(&mut self, c: char) {
        match c {
            '\n' => {
                self.lines += 1;
                self.at_line_start = true;
                return;
            }
            '?' => self.questions += 1,
            '+' | '*' | '/' | '=' | '^' | '<' | '>' | '%' => self.operators += 1,
            '-' if self.at_line_start => self.lists += 1,
            '-' => self.operators += 1,
            '{' | '}' | ';' | '`' | '[' | ']' => self.code += 1,
            '$' | '\\' => self.latex += 1,
            '•' => self.lists += 1,
            _ => {}
        }
        if !c.is_whitespace() {
            self.at_line_start = false;
        }
    }
}

/// Letters of the Latin script beyond ASCII: accented letters (Latin-1
/// Supplement, Extended-A and -B) and Vietnamese's (Latin Extended
/// Additional).
fn is_latin(c: char) -> bool {
    matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}')
}

/// Reads several texts as one, each on its own line (a request's messages),
/// up to [`MAX_WORDS`] words; past them, only the length is estimated (from
/// the bytes left), so that a long request costs no more than a 1k-word one.
pub fn extract_all(texts: &[&str], rarity: &[u8]) -> Extracted {
    let mut grams: Vec<u32> = Vec::with_capacity(64);
    let mut r = Reader {
        lines: 1,
        at_line_start: true,
        prev_byte: b' ',
        ..Reader::default()
    };
    let total_bytes: usize = texts.iter().map(|t| t.len() + 1).sum();
    let mut read_bytes = 0usize;
    'texts: for (t, text) in texts.iter().enumerate() {
        if t > 0 {
            r.finish(rarity, &mut grams);
            r.in_number = false;
            r.other('\n');
            r.prev_byte = b'\n';
        }
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if r.words as usize > MAX_WORDS {
                read_bytes += i;
                break 'texts;
            }
            let c = b[i];
            if c.is_ascii() {
                i += 1;
                if c.is_ascii_alphanumeric() {
                    if c.is_ascii_digit() {
                        r.digits += 1;
                        if !r.in_number && r.len == 0 {
                            r.numbers += 1;
                        }
                        r.in_number = r.len == 0 || r.in_number;
                        if r.at_line_start {
                            r.lists += 1;
                        }
                        r.push_byte(c);
                        r.alpha = false;
                    } else {
                        r.letters += 1;
                        if c.is_ascii_uppercase() {
                            r.upper += 1;
                        }
                        r.push_byte(c.to_ascii_lowercase());
                    }
                    r.char_done();
                    r.at_line_start = false;
                } else {
                    r.in_number = r.in_number && (c == b'.' || c == b',') && r.prev_byte.is_ascii_digit();
                    r.finish(rarity, &mut grams);
                    r.other(c as char);
                }
                r.prev_byte = c;
                continue;
            }
            // A character beyond ASCII: decoded, and lower-cased by Unicode.
            let ch = text[i..].chars().next().unwrap_or(' ');
            i += ch.len_utf8();
            if ch.is_alphanumeric() {
                r.letters += 1;
                r.non_ascii += 1;
                if ch.is_uppercase() {
                    r.upper += 1;
                }
                let alpha = ch.is_alphabetic();
                for l in ch.to_lowercase() {
                    let mut buf = [0u8; 4];
                    for &lb in l.encode_utf8(&mut buf).as_bytes() {
                        r.push_byte(lb);
                    }
                }
                r.alpha &= alpha;
                r.latin &= is_latin(ch);
                r.char_done();
                r.at_line_start = false;
            } else {
                r.in_number = false;
                r.finish(rarity, &mut grams);
                r.other(ch);
            }
            r.prev_byte = b' ';
        }
        read_bytes += b.len() + 1;
    }
    r.finish(rarity, &mut grams);
    distinct(&mut grams);
    // Past MAX_WORDS, the words not read are estimated from the bytes left.
    let words = if read_bytes < total_bytes && read_bytes > 0 {
        (f64::from(r.words) * total_bytes as f64 / read_bytes as f64) as u32
    } else {
        r.words
    };
    let ln = |n: u32, scale: f32| ((1.0 + n as f32).ln() / scale).min(2.0);
    let share = |n: u32, of: u32| if of == 0 { 0.0 } else { n as f32 / of as f32 };
    let counted = r.known + r.rare;
    let dense = [
        ln(words, 8.0),
        share(r.digits, r.digits + r.letters),
        ln(r.numbers, 4.0),
        ln(r.operators, 4.0),
        ln(r.code, 5.0),
        ln(r.lists, 3.0),
        ln(r.questions, 3.0),
        ln(r.latex, 4.0),
        share(r.non_ascii, r.letters),
        ln(r.lines, 5.0),
        if r.latin_words == 0 {
            0.0
        } else {
            (r.latin_word_bytes as f32 / r.latin_words as f32 / 10.0).min(2.0)
        },
        share(r.upper, r.letters),
        if r.known == 0 {
            0.0
        } else {
            r.rarity_sum as f32 / r.known as f32 / 80.0
        },
        share(r.rare, counted),
    ];
    let gram_value = if grams.is_empty() {
        0.0
    } else {
        1.0 / (grams.len() as f32).sqrt()
    };
    Extracted {
        grams,
        gram_value,
        dense,
    }
}
