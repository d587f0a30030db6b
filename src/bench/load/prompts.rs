//! Synthetic prompts of an exact token length, built before the measured window.
//!
//! Owns what a synthetic prompt says. Each prompt starts with a word unique to its request index,
//! so no two requests share a prefix an engine could cache (peers.md §8: "random" prompts that hit
//! the prefix cache inflate results), followed by words from a fixed vocabulary drawn by a small
//! PRNG seeded from `(seed, index)`, so a cell's prompts are the same on every run (DESIGN
//! decision 7). Lengths are measured with the engine's own tokenizer (DESIGN decision 9): the word
//! count is adjusted until the tokenizer says exactly N, or the closest count below N where a word
//! boundary makes N unreachable.

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;

use crate::bench::tokenizer::Tokenizer;
use crate::engine::client::EngineClient;
use crate::manifest::load::{DatasetFormat, DatasetPrompts, Length, PromptSpec, SharedPrefix};

/// Common English words; most are one token with a leading space in BPE vocabularies, which keeps
/// the word count close to the token count and the sizing search short.
const VOCABULARY: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her",
    "it", "an", "are", "were", "which", "be", "this", "had", "not", "but", "or", "have", "one", "they", "their", "all",
    "new", "time", "first", "after", "two", "when", "there", "also", "more", "who", "can", "into", "year", "city",
    "world", "state", "school", "water", "music", "river", "house", "light", "story", "early", "night", "small",
    "large", "power", "field", "north", "south", "market", "garden", "letter", "number", "morning", "island", "paper",
    "window", "silver", "winter", "summer", "forest", "bridge", "engine", "signal", "answer", "season", "figure",
    "voice", "table", "stone", "green", "clear", "ready", "quiet", "simple", "travel", "follow", "report", "listen",
    "mountain", "history", "village", "station", "picture", "question", "language", "kitchen", "evening", "weather",
    "machine",
];

/// Tokenize calls at most per prompt before settling for the closest count below N.
const MAX_TRIES: usize = 12;
/// Prompts sized at once (tokenize calls in flight).
const PARALLEL: usize = 8;

/// One built prompt.
pub(crate) struct Prompt {
    pub text: String,
    /// Its length: the tokenizer's count, or the word count without a tokenizer.
    pub tokens: u64,
    /// The tokenizer confirmed exactly the requested length.
    pub exact: bool,
}

/// The first `words` words of request `index`'s prompt.
pub(crate) fn prompt_text(seed: u64, index: u64, words: usize) -> String {
    let mut text = String::with_capacity(words * 7);
    if words == 0 {
        return text;
    }
    text.push_str(&index.to_string());
    text.push('.');
    let mut state = mix(seed ^ mix(index.wrapping_add(0x5eed)));
    for _ in 1..words {
        state = mix(state);
        text.push(' ');
        text.push_str(VOCABULARY[(state % VOCABULARY.len() as u64) as usize]);
    }
    text
}

/// splitmix64's finaliser: a tiny, good-enough PRNG step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The prompts of a spec: `count` of them, in request order, and their nominal length.
pub(crate) async fn for_spec(
    client: &EngineClient,
    tokenize: Option<&Tokenizer>,
    seed: u64,
    count: u64,
    spec: &PromptSpec,
) -> Result<(Vec<Prompt>, u32), String> {
    match spec {
        PromptSpec::Synthetic { input_tokens, shared_prefix } => {
            let prompts = build(client, tokenize, seed, count, input_tokens, shared_prefix.as_ref())
                .await
                .map_err(|e| format!("sizing them with the engine's tokenizer: {e}"))?;
            Ok((prompts, input_tokens.nominal()))
        }
        PromptSpec::Dataset(d) => {
            let prompts = dataset(client, tokenize, seed, count, d).await?;
            let nominal = prompts.iter().map(|p| p.tokens).sum::<u64>() / prompts.len().max(1) as u64;
            Ok((prompts, nominal as u32))
        }
    }
}

/// Builds prompts `0..count`, prompt `i` of `length.at(seed, i)` tokens: sized with the tokenizer
/// when there is one, otherwise that many words (not exact). With a shared prefix, prompt `i`
/// starts with prefix `i % groups` (itself sized to exactly its tokens).
pub(crate) async fn build(
    client: &EngineClient,
    tokenize: Option<&Tokenizer>,
    seed: u64,
    count: u64,
    length: &Length,
    shared: Option<&SharedPrefix>,
) -> Result<Vec<Prompt>, String> {
    let target = |i: u64| u64::from(length.at(seed, i));
    // Prefixes come from their own seed and index space, so they never equal a request's words.
    let prefix_seed = seed ^ 0x5052_4546;
    let Some(tokenizer) = tokenize else {
        let prefixes: Vec<String> = shared
            .map(|p| (0..u64::from(p.groups)).map(|g| prompt_text(prefix_seed, g, p.tokens as usize)).collect())
            .unwrap_or_default();
        let prefix_words = shared.map_or(0, |p| p.tokens as usize);
        return Ok((0..count)
            .map(|i| {
                let unique = prompt_text(seed, i, (target(i) as usize).saturating_sub(prefix_words).max(1));
                let text = join(prefixes.get((i % prefixes.len().max(1) as u64) as usize).map(String::as_str), unique);
                Prompt { text, tokens: target(i), exact: false }
            })
            .collect());
    };
    let mut prefixes = Vec::new();
    if let Some(p) = shared {
        let sizer = Sizer { client, tokenizer, seed: prefix_seed, prefixes: &[] };
        for g in 0..u64::from(p.groups) {
            prefixes.push(sizer.size(g, p.tokens as usize, u64::from(p.tokens)).await?.text);
        }
    }
    let sizer = Sizer { client, tokenizer, seed, prefixes: &prefixes };
    // The first prompt finds the words-per-token ratio; the rest start from it.
    let n0 = target(0);
    let first = sizer.size(0, n0 as usize, n0).await?;
    let words0 = if first.text.is_empty() { 0 } else { first.text.split(' ').count() };
    let guess = |n: u64| (words0 as u64 * n).div_ceil(n0.max(1)) as usize;
    let mut prompts = Vec::with_capacity(count as usize);
    prompts.push(first);
    // A plain loop rather than stream combinators, which make the future lose `Send`
    // (rust-lang/rust#64552).
    let mut in_flight = FuturesOrdered::new();
    let mut next = 1;
    loop {
        while in_flight.len() < PARALLEL && next < count {
            in_flight.push_back(sizer.size(next, guess(target(next)), target(next)));
            next += 1;
        }
        match in_flight.next().await {
            Some(prompt) => prompts.push(prompt?),
            None => break,
        }
    }
    Ok(prompts)
}

/// Reads the prompts of a dataset file.
pub(crate) fn read_dataset(d: &DatasetPrompts) -> Result<Vec<String>, String> {
    let path = std::path::Path::new(&d.path);
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the dataset {}: {e}", path.display()))?;
    let field = d.field.as_deref().unwrap_or("prompt");
    let pick = |v: &serde_json::Value| -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get(field).and_then(|f| f.as_str()).map(String::from),
            _ => None,
        }
    };
    let mut out = Vec::new();
    match d.format {
        DatasetFormat::Jsonl => {
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), n + 1))?;
                out.push(pick(&v).ok_or_else(|| {
                    format!(
                        "{}:{}: no string `{field}` (set `field:` to the key holding the prompt)",
                        path.display(),
                        n + 1
                    )
                })?);
            }
        }
        DatasetFormat::Json | DatasetFormat::Sharegpt => {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
            let items = v.as_array().ok_or_else(|| format!("{}: expected a JSON array", path.display()))?;
            for (n, item) in items.iter().enumerate() {
                let prompt =
                    if d.format == DatasetFormat::Sharegpt {
                        // The first turn a person wrote; conversations that start elsewhere are skipped.
                        item["conversations"].as_array().and_then(|c| {
                            c.iter()
                                .find(|t| matches!(t["from"].as_str(), Some("human" | "user")))
                                .and_then(|t| t["value"].as_str())
                                .map(String::from)
                        })
                    } else {
                        Some(pick(item).ok_or_else(|| {
                            format!("{}: entry {n}: no string `{field}` (set `field:`)", path.display())
                        })?)
                    };
                out.extend(prompt.filter(|p| !p.trim().is_empty()));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no prompts found (format `{:?}`)", path.display(), d.format).to_lowercase());
    }
    Ok(out)
}

/// `count` prompts from a dataset in a seeded order (cycling when it has fewer), each measured
/// with the engine's tokenizer when there is one (else counted in words, not exact).
async fn dataset(
    client: &EngineClient,
    tokenize: Option<&Tokenizer>,
    seed: u64,
    count: u64,
    d: &DatasetPrompts,
) -> Result<Vec<Prompt>, String> {
    let mut all = read_dataset(d)?;
    // Fisher–Yates with the prompt PRNG: the same order for the same seed.
    let mut state = mix(seed ^ 0x4441_5441);
    for i in (1..all.len()).rev() {
        state = mix(state);
        all.swap(i, (state % (i as u64 + 1)) as usize);
    }
    if (count as usize) > all.len() {
        tracing::warn!(
            "the dataset has {} prompts for {count} requests: prompts repeat, and a prefix cache may answer repeats faster",
            all.len()
        );
    }
    let take: Vec<String> = (0..count as usize).map(|i| all[i % all.len()].clone()).collect();
    let mut out = Vec::with_capacity(take.len());
    match tokenize {
        Some(tokenizer) => {
            let mut in_flight = FuturesOrdered::new();
            let mut texts = take.into_iter();
            loop {
                while in_flight.len() < PARALLEL {
                    let Some(text) = texts.next() else { break };
                    in_flight.push_back(async move {
                        let n = tokenizer.count(client, &text).await;
                        (text, n)
                    });
                }
                match in_flight.next().await {
                    Some((text, n)) => {
                        let tokens =
                            n.map_err(|e| format!("measuring the dataset's prompts with the engine's tokenizer: {e}"))?;
                        out.push(Prompt { text, tokens, exact: true });
                    }
                    None => break,
                }
            }
        }
        None => out.extend(take.into_iter().map(|text| {
            let tokens = text.split_whitespace().count() as u64;
            Prompt { text, tokens, exact: false }
        })),
    }
    Ok(out)
}

struct Sizer<'a> {
    client: &'a EngineClient,
    tokenizer: &'a Tokenizer,
    seed: u64,
    /// Shared prefixes: prompt `i` starts with `prefixes[i % len]`.
    prefixes: &'a [String],
}

fn join(prefix: Option<&str>, unique: String) -> String {
    match prefix {
        Some(p) => format!("{p} {unique}"),
        None => unique,
    }
}

impl Sizer<'_> {
    async fn count(&self, text: &str) -> Result<u64, String> {
        self.tokenizer.count(self.client, text).await
    }

    /// Request `index`'s prompt with `words` words after its prefix.
    fn text(&self, index: u64, words: usize) -> String {
        let prefix =
            (!self.prefixes.is_empty()).then(|| self.prefixes[(index % self.prefixes.len() as u64) as usize].as_str());
        join(prefix, prompt_text(self.seed, index, words))
    }

    /// Searches the word count whose prompt has exactly `n` tokens, starting at `words`.
    async fn size(&self, index: u64, mut words: usize, n: u64) -> Result<Prompt, String> {
        // Closest below (most words with fewer tokens) and closest above (fewest with more).
        let mut below: Option<(usize, u64)> = None;
        let mut above: Option<(usize, u64)> = None;
        for _ in 0..MAX_TRIES {
            let text = self.text(index, words);
            let tokens = self.count(&text).await?;
            if tokens == n {
                return Ok(Prompt { text, tokens, exact: true });
            }
            if tokens < n {
                below = below.max(Some((words, tokens)));
            } else if above.is_none_or(|(w, _)| words < w) {
                above = Some((words, tokens));
            }
            let next = next_guess(words, tokens, n, below, above);
            match next {
                Some(next) => words = next,
                None => break,
            }
        }
        // N is not reachable at a word boundary (or the search ran out): closest below, else above.
        let (words, tokens) = below.or(above).unwrap_or((words, 0));
        Ok(Prompt { text: self.text(index, words), tokens, exact: false })
    }
}

/// The next word count to try, or `None` when the bracket has no word count left inside it.
fn next_guess(
    words: usize,
    tokens: u64,
    n: u64,
    below: Option<(usize, u64)>,
    above: Option<(usize, u64)>,
) -> Option<usize> {
    let low = below.map_or(0, |(w, _)| w + 1);
    let high = above.map_or(usize::MAX, |(w, _)| w.saturating_sub(1));
    if low > high || (above.is_some_and(|(w, _)| w == 0) && below.is_none()) {
        return None;
    }
    // Secant step on the tokens-per-word ratio seen so far.
    let per_word = if words == 0 { 1.0 } else { (tokens.max(1) as f64) / words as f64 };
    let step = ((n as f64 - tokens as f64) / per_word).round() as i64;
    let step = if step == 0 { if tokens < n { 1 } else { -1 } } else { step };
    let guess = (words as i64 + step).max(0) as usize;
    Some(guess.clamp(low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_deterministic_unique_and_prefix_stable() {
        let a = prompt_text(7, 3, 20);
        assert_eq!(a, prompt_text(7, 3, 20));
        assert_eq!(a.split(' ').count(), 20);
        assert!(a.starts_with("3. "));
        assert!(prompt_text(7, 3, 25).starts_with(&a));
        assert_ne!(prompt_text(7, 4, 20)[3..], a[3..]);
        assert_ne!(prompt_text(8, 3, 20), a);
        assert_eq!(prompt_text(7, 3, 0), "");
        assert_eq!(prompt_text(7, 3, 1), "3.");
    }

    #[test]
    fn guesses_stay_inside_the_bracket() {
        // 2 tokens per word, want 9: 4 words → 8, 5 words → 10: unreachable.
        assert_eq!(next_guess(4, 8, 9, Some((4, 8)), None), Some(5));
        assert_eq!(next_guess(5, 10, 9, Some((4, 8)), Some((5, 10))), None);
        assert_eq!(next_guess(10, 20, 9, None, Some((10, 20))), Some(4));
        assert_eq!(next_guess(0, 1, 0, None, Some((0, 1))), None);
    }
}
