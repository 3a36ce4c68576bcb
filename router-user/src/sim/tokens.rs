//! A deterministic tokenizer stand-in and the simulator's output words.
//!
//! Not a real BPE: text is split GPT-style into pieces (a word or a punctuation run, with the
//! space in front of it attached; whitespace runs on their own), each piece is cut into chunks of
//! at most [`CHARS_PER_TOKEN`] characters, and each chunk's id is a hash of its text. English
//! prose comes out at roughly 3.5–4 characters per token, near Llama 3's ratio, and equal text
//! always gives equal ids, which is all prefix caching needs. Llama 3's special markers
//! (`<|begin_of_text|>`, `<|eot_id|>`, ...) are single tokens with their real ids.
//!
//! Output text is made of short words (each one token; every word but the first has its leading
//! space), picked by a hash of (seed, request id, position): a client that sends a response back
//! in the next turn of a conversation re-tokenizes it to the very ids the engine generated, so
//! multi-turn prefix caching behaves as it does on a real server.
use std::sync::LazyLock;

use xxhash_rust::xxh3::xxh3_64;

/// Longest chunk of a piece that becomes one token.
pub const CHARS_PER_TOKEN: usize = 4;
/// Llama 3's vocabulary size; ordinary ids fall below the first special id.
pub const VOCAB_SIZE: u32 = 128_256;
pub const BEGIN_OF_TEXT: u32 = 128_000;
pub const END_OF_TEXT: u32 = 128_001;
pub const START_HEADER: u32 = 128_006;
pub const END_HEADER: u32 = 128_007;
pub const EOT: u32 = 128_009;

const SPECIALS: [(&str, u32); 5] = [
    ("<|begin_of_text|>", BEGIN_OF_TEXT),
    ("<|end_of_text|>", END_OF_TEXT),
    ("<|start_header_id|>", START_HEADER),
    ("<|end_header_id|>", END_HEADER),
    ("<|eot_id|>", EOT),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    Space,
    Symbol,
}

fn class(c: char) -> Class {
    if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Symbol
    }
}

fn special_at(text: &str) -> Option<(usize, u32)> {
    if !text.starts_with("<|") {
        return None;
    }
    SPECIALS
        .iter()
        .find(|(marker, _)| text.starts_with(marker))
        .map(|(marker, id)| (marker.len(), *id))
}

fn chunk_id(chunk: &str) -> u32 {
    (xxh3_64(chunk.as_bytes()) % u64::from(BEGIN_OF_TEXT)) as u32
}

/// Appends the ids of `piece`, cut into chunks of at most [`CHARS_PER_TOKEN`] characters.
fn push_piece(piece: &str, out: &mut Vec<u32>) {
    let mut start = 0;
    let mut chars = 0;
    for (at, _) in piece.char_indices() {
        if chars == CHARS_PER_TOKEN {
            out.push(chunk_id(&piece[start..at]));
            start = at;
            chars = 0;
        }
        chars += 1;
    }
    if start < piece.len() {
        out.push(chunk_id(&piece[start..]));
    }
}

/// Byte length of the leading run of `kind` characters in `s`, stopping before a special marker.
fn run_len(s: &str, kind: Class) -> usize {
    s.char_indices()
        .find(|&(at, c)| class(c) != kind || (at > 0 && special_at(&s[at..]).is_some()))
        .map_or(s.len(), |(at, _)| at)
}

/// Appends the token ids of `text` (no BOS added).
pub fn encode_into(text: &str, out: &mut Vec<u32>) {
    let mut rest = text;
    while let Some(first) = rest.chars().next() {
        if let Some((len, id)) = special_at(rest) {
            out.push(id);
            rest = &rest[len..];
            continue;
        }
        let kind = class(first);
        let mut end = run_len(rest, kind);
        let space_leads_next = kind == Class::Space
            && end < rest.len()
            && rest[..end].ends_with(' ')
            && special_at(&rest[end..]).is_none();
        if space_leads_next {
            // The space before a word or symbol belongs to it (" word"), as in GPT-style BPE.
            if end > 1 {
                end -= 1;
            } else {
                let next = &rest[1..];
                let next_kind = next.chars().next().map_or(Class::Space, class);
                end = 1 + run_len(next, next_kind);
            }
        }
        push_piece(&rest[..end], out);
        rest = &rest[end..];
    }
}

/// Token ids of `text`, without BOS.
pub fn encode(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / CHARS_PER_TOKEN + 1);
    encode_into(text, &mut out);
    out
}

/// Token ids of a prompt as a vLLM completions request sees them: BOS first (Llama 3 adds it),
/// unless the text already starts with the BOS marker (a rendered chat template does).
pub fn encode_prompt(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / CHARS_PER_TOKEN + 2);
    if !text.starts_with(SPECIALS[0].0) {
        out.push(BEGIN_OF_TEXT);
    }
    encode_into(text, &mut out);
    out
}

/// Number of tokens `text` encodes to (no BOS).
pub fn count(text: &str) -> usize {
    let mut out = Vec::new();
    encode_into(text, &mut out);
    out.len()
}

/// Words the simulated model "writes": each is one token with or without a leading space.
const OUTPUT_WORDS: [&str; 64] = [
    "the", "of", "and", "to", "in", "is", "it", "for", "on", "as", "by", "at", "an", "be", "or",
    "we", "can", "not", "all", "one", "has", "new", "but", "you", "may", "use", "two", "way",
    "set", "run", "key", "map", "log", "hit", "low", "top", "end", "out", "now", "its", "so", "if",
    "do", "no", "up", "our", "are", "was", "had", "per", "few", "own", "job", "net", "pod", "gpu",
    "kv", "row", "bit", "day", "yes", "any", "due", "via",
];

/// One output word: as the first token (no leading space, like a model starting its answer)
/// and as any later token (`" word"`), each with its id.
struct OutputWord {
    first: (String, u32),
    later: (String, u32),
}

fn single_token(text: String) -> (String, u32) {
    let ids = encode(&text);
    debug_assert_eq!(ids.len(), 1, "output word {text:?} must be one token");
    let id = ids.first().copied().unwrap_or(0);
    (text, id)
}

static OUTPUT_VOCAB: LazyLock<Vec<OutputWord>> = LazyLock::new(|| {
    OUTPUT_WORDS
        .iter()
        .map(|word| OutputWord {
            first: single_token((*word).to_owned()),
            later: single_token(format!(" {word}")),
        })
        .collect()
});

/// SplitMix64 finaliser: a cheap, well-mixed hash of one integer.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Key of one request's output stream: the words at every position derive from it.
pub fn output_key(seed: u64, request_id: u64) -> u64 {
    mix64(seed ^ mix64(request_id))
}

fn output_word(key: u64, position: u32) -> &'static (String, u32) {
    let hash = mix64(key ^ u64::from(position).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let word = &OUTPUT_VOCAB[(hash % OUTPUT_WORDS.len() as u64) as usize];
    if position == 0 {
        &word.first
    } else {
        &word.later
    }
}

/// Token id of output token `position` of the request whose [`output_key`] is `key`.
pub fn output_token_keyed(key: u64, position: u32) -> u32 {
    output_word(key, position).1
}

/// Token id of output token `position` (0-based) of request `request_id`.
pub fn output_token(seed: u64, request_id: u64, position: u32) -> u32 {
    output_token_keyed(output_key(seed, request_id), position)
}

/// Text of output token `position` (0-based) of request `request_id`: `"the"` for the first,
/// `" the"` after that.
pub fn output_text(seed: u64, request_id: u64, position: u32) -> &'static str {
    output_word(output_key(seed, request_id), position)
        .0
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_gives_equal_ids_and_spaces_attach_to_words() {
        assert_eq!(encode("hello world"), encode("hello world"));
        assert_eq!(encode(" the").len(), 1);
        // "hello" + " world": the space belongs to the second word.
        // "hell" "o" | " wor" "ld"
        let ids = encode("hello world");
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert_eq!(&encode("hello world")[2..], encode(" world").as_slice());
    }

    #[test]
    fn chunking_is_four_characters() {
        assert_eq!(encode("abcd").len(), 1);
        assert_eq!(encode("abcde").len(), 2);
        assert_eq!(encode(" abc").len(), 1);
        assert_eq!(encode(" abcd").len(), 2);
        assert_eq!(encode("\n\n").len(), 1);
        assert!(encode("").is_empty());
    }

    #[test]
    fn specials_are_single_tokens_with_llama3_ids() {
        let ids =
            encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
        assert_eq!(ids.first(), Some(&BEGIN_OF_TEXT));
        assert_eq!(ids[1], START_HEADER);
        assert_eq!(ids[3], END_HEADER);
        assert_eq!(ids.last(), Some(&EOT));
        // A lone "<|" that is not a marker is ordinary text.
        assert!(encode("<|nope|>").iter().all(|&id| id < BEGIN_OF_TEXT));
        assert!(encode("x <|eot_id|>").contains(&EOT));
    }

    #[test]
    fn prompts_get_bos_once() {
        assert_eq!(encode_prompt("hi")[0], BEGIN_OF_TEXT);
        let chat = encode_prompt("<|begin_of_text|>hi");
        assert_eq!(chat.iter().filter(|&&id| id == BEGIN_OF_TEXT).count(), 1);
    }

    #[test]
    fn prose_is_about_four_characters_per_token() {
        let text = "Switchyard routes inference requests to the model server that can answer them \
                    soonest, using the prefix cache, the queue, and the state of each GPU. It runs \
                    next to Envoy as an external processor and pushes load from node agents.";
        let ratio = text.chars().count() as f64 / count(text) as f64;
        assert!((3.0..=4.5).contains(&ratio), "chars per token {ratio}");
    }

    #[test]
    fn output_words_round_trip_through_the_tokenizer() {
        for position in 0..200 {
            let text = output_text(7, 42, position);
            assert_eq!(
                encode(text),
                vec![output_token(7, 42, position)],
                "{text:?}"
            );
        }
        // A response echoed back in a later prompt tokenizes to the generated ids.
        let response: String = (0..50).map(|p| output_text(7, 42, p)).collect();
        let generated: Vec<u32> = (0..50).map(|p| output_token(7, 42, p)).collect();
        let mut echoed = encode("<|start_header_id|>assistant<|end_header_id|>\n\n");
        let header_len = echoed.len();
        encode_into(&response, &mut echoed);
        assert_eq!(&echoed[header_len..], generated.as_slice());
        // Different requests write different text.
        assert_ne!(
            (0..20).map(|p| output_token(7, 1, p)).collect::<Vec<_>>(),
            (0..20).map(|p| output_token(7, 2, p)).collect::<Vec<_>>()
        );
    }
}
