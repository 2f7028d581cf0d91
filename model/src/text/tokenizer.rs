//! The BERT uncased tokenizer of all-MiniLM-L6-v2: the Hugging Face `tokenizers` pipeline of the
//! model's tokenizer.json (special tokens, `BertNormalizer`, `BertPreTokenizer`, `WordPiece`,
//! `[CLS] … [SEP]`), written out over vocab.txt.
//!
//! It reproduces `tokenizers` exactly, including on odd input: the Unicode tables come from the
//! same crates `tokenizers` uses (`unicode_categories`, `unicode-normalization-alignments`, both
//! Unicode 9), so a code point those tables do not know is dropped as "other" here just as
//! there. model/tests/text_minilm.rs compares the two on two thousand strings.
//!
//! Unlike tokenizer.json, which pads and truncates at 128, nothing is padded and the ids are
//! truncated at [`MAX_TOKENS`], the sequence length sentence-transformers uses for this model.

use std::collections::HashMap;
use std::path::Path;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

use super::TextError;

/// The most ids [`Tokenizer::encode`] returns, `[CLS]` and `[SEP]` included.
pub const MAX_TOKENS: usize = 256;

/// Words of more characters than this become one `[UNK]` (WordPiece's `max_input_chars_per_word`).
const MAX_WORD_CHARS: usize = 100;

/// The special tokens, matched verbatim in the raw text before normalisation (as the
/// `added_tokens` of tokenizer.json are: "a[SEP]b" has a `[SEP]` in the middle).
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Why a vocabulary was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabError {
    #[error("the vocabulary has no {0} token")]
    MissingSpecialToken(&'static str),
    #[error("the vocabulary has more than 2^32 lines")]
    TooLarge,
}

/// WordPiece over a BERT vocabulary. Cheap to share: encoding takes `&self`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    /// `SPECIAL_TOKENS` with their ids.
    specials: Vec<(&'static str, u32)>,
    unk: u32,
    cls: u32,
    sep: u32,
}

impl Tokenizer {
    /// Reads vocab.txt: one token a line, the id is the line number.
    pub fn from_vocab_file(path: &Path) -> Result<Tokenizer, TextError> {
        let text = std::fs::read_to_string(path).map_err(|source| TextError::Io { path: path.into(), source })?;
        Tokenizer::from_vocab_text(&text).map_err(|source| TextError::Vocab { path: path.into(), source })
    }

    /// A tokenizer over the vocabulary `text` (vocab.txt's contents). Trailing white space of a
    /// line is not part of its token, as in `tokenizers`; a later duplicate line wins.
    pub fn from_vocab_text(text: &str) -> Result<Tokenizer, VocabError> {
        let mut vocab = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let id = u32::try_from(index).map_err(|_| VocabError::TooLarge)?;
            vocab.insert(line.trim_end().to_string(), id);
        }
        let mut specials = Vec::with_capacity(SPECIAL_TOKENS.len());
        for token in SPECIAL_TOKENS {
            let id = *vocab.get(token).ok_or(VocabError::MissingSpecialToken(token))?;
            specials.push((token, id));
        }
        let id = |token: &str| specials.iter().find(|(t, _)| *t == token).expect("every special token was found").1;
        let (unk, cls, sep) = (id("[UNK]"), id("[CLS]"), id("[SEP]"));
        Ok(Tokenizer { vocab, specials, unk, cls, sep })
    }

    /// Tokens in the vocabulary (the embedding table must have at least this many rows).
    pub fn vocab_size(&self) -> usize {
        self.vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0)
    }

    /// The id of `token` (e.g. "sunset", "##s", "[CLS]"), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// `[CLS]`, the word pieces of `text`, `[SEP]`: at least 2 and at most [`MAX_TOKENS`] ids
    /// (the end of a longer text is dropped). Never fails: what is not in the vocabulary
    /// becomes `[UNK]`, control characters are dropped.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let budget = MAX_TOKENS - 2;
        let mut ids = vec![self.cls];
        let mut rest = text;
        while !rest.is_empty() && ids.len() <= budget {
            match self.next_special(rest) {
                Some((at, token, id)) => {
                    self.push_text(&rest[..at], &mut ids, budget);
                    if ids.len() <= budget {
                        ids.push(id);
                    }
                    rest = &rest[at + token.len()..];
                }
                None => {
                    self.push_text(rest, &mut ids, budget);
                    rest = "";
                }
            }
        }
        ids.truncate(1 + budget);
        ids.push(self.sep);
        ids
    }

    /// The leftmost special token in `text`: its byte offset, text and id.
    fn next_special(&self, text: &str) -> Option<(usize, &'static str, u32)> {
        text.match_indices('[').find_map(|(at, _)| {
            self.specials
                .iter()
                .filter(|(token, _)| text[at..].starts_with(token))
                .max_by_key(|(token, _)| token.len())
                .map(|&(token, id)| (at, token, id))
        })
    }

    /// Appends the word pieces of `text` (no special tokens in it) to `ids`, stopping once the
    /// ids after `[CLS]` reach `budget`.
    fn push_text(&self, text: &str, ids: &mut Vec<u32>, budget: usize) {
        let normalized = normalize(text);
        let mut piece = String::new();
        for word in pre_tokenize(&normalized) {
            if ids.len() > budget {
                return;
            }
            self.push_word(word, ids, &mut piece);
        }
    }

    /// Greedy longest-match WordPiece of one word; the whole word is one `[UNK]` when it is
    /// longer than 100 characters or some part of it matches nothing. `piece` is scratch space.
    fn push_word(&self, word: &str, ids: &mut Vec<u32>, piece: &mut String) {
        if word.chars().count() > MAX_WORD_CHARS {
            ids.push(self.unk);
            return;
        }
        let first = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                piece.clear();
                if start > 0 {
                    piece.push_str("##");
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    break Some(id);
                }
                match word[start..end].chars().next_back() {
                    Some(last) if end - last.len_utf8() > start => end -= last.len_utf8(),
                    _ => break None,
                }
            };
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }
}

/// `BertNormalizer` with clean_text, handle_chinese_chars, strip_accents and lowercase, in that
/// order: control characters, NUL and U+FFFD dropped, white space to ' ', spaces around CJK
/// ideographs, NFD with non-spacing marks dropped, lowercase.
fn normalize(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_chinese_char(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    let mut out = String::with_capacity(cleaned.len());
    for (c, _) in cleaned.as_str().nfd() {
        if !c.is_mark_nonspacing() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `BertPreTokenizer`: split on white space (dropped), then around every punctuation
/// character (kept as a word of its own).
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace).filter(|w| !w.is_empty()).flat_map(split_punctuation)
}

fn split_punctuation(word: &str) -> impl Iterator<Item = &str> {
    let mut rest = word;
    std::iter::from_fn(move || {
        let (at, c) = rest.char_indices().find(|&(_, c)| is_punctuation(c)).unwrap_or((rest.len(), ' '));
        let piece = if at == 0 && !rest.is_empty() { &rest[..c.len_utf8()] } else { &rest[..at] };
        rest = &rest[piece.len()..];
        (!piece.is_empty()).then_some(piece)
    })
}

/// White space for BERT: tab, newline, carriage return (control characters otherwise) and
/// Unicode white space.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Cc, Cf and Co in Unicode 9 (`unicode_categories`'s "other"), except tab, newline and
/// carriage return.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// ASCII punctuation (which includes symbols such as `$`, `+`, `^`) or a Unicode P* category.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana), as BERT defines them.
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small vocabulary: ids are line numbers.
    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nsun\n##set\n##s\nover\nthe\nocean\n,\n!\n\
                         creme\nbrulee\n東\n京\nun\n##believ\n##ab\n##able\n##ably\n##ly\na\n$\nx\n##x\n";
    const PAD: u32 = 0;
    const UNK: u32 = 1;
    const CLS: u32 = 2;
    const SEP: u32 = 3;
    const MASK: u32 = 4;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_vocab_text(VOCAB).expect("VOCAB has every special token")
    }

    fn id(t: &Tokenizer, token: &str) -> u32 {
        t.token_id(token).unwrap_or_else(|| panic!("{token} is in VOCAB"))
    }

    #[test]
    fn words_split_into_the_longest_pieces() {
        let t = tokenizer();
        let ids = t.encode("Sunset over the OCEAN, sunsets!");
        let expected = ["sun", "##set", "over", "the", "ocean", ",", "sun", "##set", "##s", "!"];
        let mut want = vec![CLS];
        want.extend(expected.iter().map(|w| id(&t, w)));
        want.push(SEP);
        assert_eq!(ids, want);
        // The longest piece wins: "##ably", not "##ab" + "##ly".
        let (un, believ) = (id(&t, "un"), id(&t, "##believ"));
        assert_eq!(t.encode("unbelievably"), [CLS, un, believ, id(&t, "##ably"), SEP]);
        assert_eq!(t.encode("unbelievable"), [CLS, un, believ, id(&t, "##able"), SEP]);
    }

    #[test]
    fn a_word_with_an_unknown_part_is_one_unk() {
        let t = tokenizer();
        // "sunq": "sun" matches, "##q" does not: the whole word is [UNK], not "sun" + [UNK].
        assert_eq!(t.encode("sunq over"), [CLS, UNK, id(&t, "over"), SEP]);
        assert_eq!(t.encode("🌅"), [CLS, UNK, SEP]);
    }

    #[test]
    fn words_over_100_characters_are_unk() {
        let t = tokenizer();
        let x = id(&t, "x");
        let xx = id(&t, "##x");
        let mut hundred = vec![CLS, x];
        hundred.extend(std::iter::repeat_n(xx, 99));
        hundred.push(SEP);
        assert_eq!(t.encode(&"x".repeat(100)), hundred);
        assert_eq!(t.encode(&"x".repeat(101)), [CLS, UNK, SEP]);
    }

    #[test]
    fn accents_are_stripped_case_folded_and_cjk_split() {
        let t = tokenizer();
        assert_eq!(t.encode("Crème BRÛLÉE"), [CLS, id(&t, "creme"), id(&t, "brulee"), SEP]);
        // Decomposed input gives the same ids as composed input.
        assert_eq!(t.encode("Cre\u{300}me"), [CLS, id(&t, "creme"), SEP]);
        assert_eq!(t.encode("東京"), [CLS, id(&t, "東"), id(&t, "京"), SEP]);
    }

    #[test]
    fn control_characters_vanish_and_white_space_separates() {
        let t = tokenizer();
        let (sun, over) = (id(&t, "sun"), id(&t, "over"));
        assert_eq!(t.encode("sun\u{0}\u{200b}\u{fffd}\tover"), [CLS, sun, over, SEP]);
        assert_eq!(t.encode("sun\u{3000}over"), [CLS, sun, over, SEP]);
        assert_eq!(t.encode("s\u{200d}un"), [CLS, sun, SEP], "zero-width joiner (Cf) is dropped");
        assert_eq!(t.encode(""), [CLS, SEP]);
        assert_eq!(t.encode(" \n "), [CLS, SEP]);
    }

    #[test]
    fn ascii_symbols_are_punctuation() {
        let t = tokenizer();
        assert_eq!(t.encode("a$x"), [CLS, id(&t, "a"), id(&t, "$"), id(&t, "x"), SEP]);
    }

    #[test]
    fn special_tokens_are_matched_in_the_raw_text() {
        let t = tokenizer();
        let (a, x) = (id(&t, "a"), id(&t, "x"));
        assert_eq!(t.encode("a[SEP]x"), [CLS, a, SEP, x, SEP]);
        assert_eq!(t.encode("[MASK][PAD]"), [CLS, MASK, PAD, SEP]);
        // Not special: lowercase, or broken up.
        assert_eq!(t.encode("[sep]"), [CLS, UNK, UNK, UNK, SEP]);
        assert_eq!(t.encode("[ SEP ]").len(), 5);
    }

    #[test]
    fn long_texts_are_truncated_at_256_ids() {
        let t = tokenizer();
        let ids = t.encode(&"sunsets ".repeat(200));
        assert_eq!(ids.len(), MAX_TOKENS);
        assert_eq!((ids[0], ids[MAX_TOKENS - 1]), (CLS, SEP));
        let (sun, set, s) = (id(&t, "sun"), id(&t, "##set"), id(&t, "##s"));
        assert_eq!(&ids[1..7], [sun, set, s, sun, set, s]);
        assert_eq!(ids[MAX_TOKENS - 2], set, "254 = 3 × 84 + 2: the 85th word is cut after its ##set");
        let specials = t.encode(&"[MASK]".repeat(300));
        assert_eq!(specials.len(), MAX_TOKENS);
        assert!(specials[1..MAX_TOKENS - 1].iter().all(|&i| i == MASK));
    }

    #[test]
    fn a_vocabulary_without_special_tokens_is_refused() {
        let err = Tokenizer::from_vocab_text("[PAD]\n[UNK]\n[CLS]\nhello\n").unwrap_err();
        assert_eq!(err, VocabError::MissingSpecialToken("[SEP]"));
        assert_eq!(tokenizer().vocab_size(), VOCAB.lines().count());
    }
}
