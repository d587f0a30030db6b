//! What the simulator says: a request body and the seed in, a deterministic [`Generation`] out.
//!
//! Everything here is a pure function of `(seed, body bytes)`; no clock, no counter, no shared state,
//! so two servers given the same bodies answer the same words in any arrival order. Each API module
//! reads its own request fields (prompt, limit, `ignore_eos`) and hands them to [`draw`]; how the
//! answer is framed on the wire is the API module's business.

use sha2::{Digest, Sha256};

use super::SimArgs;

/// One simulated answer: how many tokens, which of them are reasoning, and why it ended.
#[derive(Debug, Clone)]
pub(super) struct Generation {
    /// `sha256(seed ‖ body)`: the only source of every choice below and of every token's word.
    pub hash: u64,
    pub prompt_tokens: u32,
    /// Completion tokens, reasoning included (as OpenAI and vLLM count them); at least 1.
    pub total: u32,
    /// The first `reasoning` of the `total` tokens are reasoning, not content.
    pub reasoning: u32,
    /// The answer ran to its token limit; otherwise it stopped at its end-of-sequence token.
    pub length: bool,
    /// Answer with a failure instead (the `--error-rate` draw).
    pub fails: bool,
    /// The answer key's words for this request (`--answers`), instead of drawn ones.
    pub answer: Option<std::sync::Arc<Vec<String>>>,
}

/// What a request asks of the answer's length.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The token limit (`max_tokens`, `max_new_tokens`, `num_predict`); at least 1.
    pub max: u32,
    /// No end-of-sequence before this many tokens (`min_tokens`).
    pub min: Option<u32>,
    /// Run to `max` (`ignore_eos`).
    pub ignore_eos: bool,
}

const SALT_ERROR: u64 = 0x6572_726f_725f_7261;
const SALT_EOS: u64 = 0x656f_735f_706f_696e;
const SALT_WORD: u64 = 0x776f_7264_5f5f_5f5f;
const SALT_LOGPROB: u64 = 0x6c6f_6770_726f_6273;

/// Decides the answer to `body`; `reasoning` is how many leading tokens are reasoning at most.
pub(super) fn draw(args: &SimArgs, body: &[u8], prompt_tokens: u32, limits: Limits, reasoning: u32) -> Generation {
    let hash = request_hash(args.seed, body);
    let max = limits.max.max(1);
    if let Some(words) = keyed_answer(args, body) {
        let total = saturate(words.len()).clamp(1, max);
        return Generation {
            hash,
            prompt_tokens,
            total,
            reasoning: 0,
            length: total == max,
            fails: false,
            answer: Some(std::sync::Arc::new(words)),
        };
    }
    let total = if limits.ignore_eos || args.ignore_eos {
        max
    } else {
        let low = limits.min.unwrap_or(0).clamp(1, max);
        low + (mix(hash ^ SALT_EOS) % u64::from(max - low + 1)) as u32
    };
    Generation {
        hash,
        prompt_tokens,
        total,
        reasoning: reasoning.min(total),
        length: total == max,
        fails: unit(mix(hash ^ SALT_ERROR)) < args.error_rate,
        answer: None,
    }
}

/// The answer key's answer to `body`: the entry whose match appears latest in it.
fn keyed_answer(args: &SimArgs, body: &[u8]) -> Option<Vec<String>> {
    if args.answer_key.is_empty() {
        return None;
    }
    let body = String::from_utf8_lossy(body);
    let mut best: Option<(usize, &Vec<String>)> = None;
    for (m, answer) in args.answer_key.iter() {
        let at = if m.is_empty() { Some(0) } else { body.rfind(m.as_str()).map(|i| i + 1) };
        if let Some(at) = at
            && best.is_none_or(|(b, _)| at > b)
        {
            best = Some((at, answer));
        }
    }
    best.map(|(_, a)| a.clone()).filter(|a| !a.is_empty())
}

/// The token ids of `text` by the sim's tokenizer: one token per whitespace-separated word.
pub(super) fn token_ids(text: &str) -> Vec<u32> {
    text.split_whitespace().map(word_id).collect()
}

/// Token count of `text`: its whitespace-separated words.
pub(super) fn words(text: &str) -> u32 {
    saturate(text.split_whitespace().count())
}

pub(super) fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The sim tokenizer's id for one word: FNV-1a, stable across builds and platforms.
pub(super) fn word_id(word: &str) -> u32 {
    let hash =
        word.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    (hash % 32_000) as u32
}

fn request_hash(seed: u64, body: &[u8]) -> u64 {
    let digest = Sha256::new().chain_update(seed.to_le_bytes()).chain_update(body).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]); // a SHA-256 digest is 32 bytes
    u64::from_le_bytes(first)
}

/// splitmix64's finaliser: decorrelates the draws taken from one request hash.
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw mapped onto `[0, 1)`, so that `error_rate` 1.0 always fails and 0.0 never does.
fn unit(draw: u64) -> f64 {
    (draw >> 11) as f64 / (1u64 << 53) as f64
}

impl Generation {
    /// The number of token `i`'s word (`w<n>`).
    fn word(&self, i: u32) -> u64 {
        mix(self.hash ^ SALT_WORD.wrapping_add(u64::from(i))) % 10_000
    }

    /// Appends tokens `from..to` of this answer: each is a space and one word, so words = tokens.
    pub fn push_tokens(&self, out: &mut String, from: u32, to: u32) {
        for i in from..to {
            self.push_token(out, i);
        }
    }

    /// Appends token `i`'s text (` w<n>`, or the answer key's word).
    pub fn push_token(&self, out: &mut String, i: u32) {
        use std::fmt::Write as _;
        match self.answer.as_ref().and_then(|a| a.get(i as usize)) {
            Some(w) => {
                out.push(' ');
                out.push_str(w);
            }
            None => {
                let _ = write!(out, " w{}", self.word(i)); // writing to a String cannot fail
            }
        }
    }

    /// Token `i`'s id by the sim's tokenizer (the id `/tokenize` gives its word).
    pub fn token_id(&self, i: u32) -> u32 {
        match self.answer.as_ref().and_then(|a| a.get(i as usize)) {
            Some(w) => word_id(w),
            None => word_id(&format!("w{}", self.word(i))),
        }
    }

    /// Token `i`'s log-probability, in `(-4, 0]`, with the few digits an f32 prints.
    pub fn logprob(&self, i: u32) -> f64 {
        let draw = mix(self.hash ^ SALT_LOGPROB.wrapping_add(u64::from(i))) % 40_000;
        -(draw as f64) / 10_000.0
    }

    /// Tokens `from..to` as text.
    pub fn text(&self, from: u32, to: u32) -> String {
        let mut out = String::with_capacity(6 * (to.saturating_sub(from)) as usize);
        self.push_tokens(&mut out, from, to);
        out
    }

    /// Tokens in the first streamed event; the pacing of every later event counts from it.
    pub fn first_event(&self, tokens_per_chunk: u32) -> u32 {
        let phase_end = if self.reasoning > 0 { self.reasoning } else { self.total };
        tokens_per_chunk.min(phase_end)
    }

    /// Size of the event that starts at token `sent`: events never mix reasoning and content.
    pub fn event_size(&self, sent: u32, tokens_per_chunk: u32) -> u32 {
        let phase_end = if sent < self.reasoning { self.reasoning } else { self.total };
        tokens_per_chunk.min(phase_end - sent)
    }
}
