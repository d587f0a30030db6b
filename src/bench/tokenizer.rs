//! Counting tokens: with the engine's own tokenizer (its `/tokenize` call, the default and the
//! ground truth) or with a local Hugging Face `tokenizer.json` (a model's `tokenizer:`), for
//! engines without a tokenize route (OpenAI-style endpoints, Ollama) or to keep the counting off
//! the engine entirely.

use std::path::Path;
use std::sync::Arc;

use crate::engine::client::EngineClient;
use crate::plan::HttpRequest;

#[derive(Clone)]
pub enum Tokenizer {
    /// The engine's call: its request (body with `{{prompt}}`) and the pointer to the tokens.
    Engine { req: HttpRequest, pointer: String },
    /// A local tokenizer.json, counted without special tokens.
    Local(Arc<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Engine { req, .. } => write!(f, "Tokenizer::Engine({})", req.path),
            Tokenizer::Local(_) => write!(f, "Tokenizer::Local"),
        }
    }
}

impl Tokenizer {
    pub fn engine(req: HttpRequest, pointer: String) -> Tokenizer {
        Tokenizer::Engine { req, pointer }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer, String> {
        tokenizers::Tokenizer::from_file(path)
            .map(|t| Tokenizer::Local(Arc::new(t)))
            .map_err(|e| format!("cannot load the tokenizer {}: {e}", path.display()))
    }

    /// The number of tokens in `text`.
    pub async fn count(&self, client: &EngineClient, text: &str) -> Result<u64, String> {
        match self {
            Tokenizer::Engine { req, pointer } => client.count_tokens(req, pointer, text).await.map_err(|e| match e {
                // Most OpenAI-compatible servers have no tokenize route: say what to do instead.
                crate::engine::client::ClientError::Status { status: 404 | 405, .. } => format!(
                    "{e}; this server has no `{}` tokenize route: give the model a local `tokenizer:` \
                     (its tokenizer.json), or use the `openai` engine template, which sends no tokenize call \
                     (docs/engines.md)",
                    req.path
                ),
                other => other.to_string(),
            }),
            Tokenizer::Local(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().len() as u64)
                .map_err(|e| format!("the local tokenizer failed: {e}")),
        }
    }

    /// Binds a late value (the served model name) in the engine call's body.
    pub fn bind(&mut self, late: &[(&str, serde_json::Value)]) {
        if let Tokenizer::Engine { req, .. } = self {
            req.body = req.body.as_ref().map(|b| crate::template::bind_late(b, late));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer.json splitting on whitespace: one token per word, as the simulator counts.
    pub(crate) const WORDS_JSON: &str = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
 "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
 "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "the": 1, "of": 2}, "unk_token": "<unk>"}}"#;

    #[tokio::test]
    async fn a_local_tokenizer_counts_without_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, WORDS_JSON).unwrap();
        let t = Tokenizer::from_file(&path).unwrap();
        // The client is never used by a local tokenizer: nothing listens there.
        let client = EngineClient::new("http://127.0.0.1:9", vec![], 1).unwrap();
        assert_eq!(t.count(&client, "the of  unknown words 7.").await.unwrap(), 5);
        assert_eq!(t.count(&client, "").await.unwrap(), 0);
        let e = Tokenizer::from_file(&dir.path().join("missing.json")).err().unwrap();
        assert!(e.contains("cannot load the tokenizer") && e.contains("missing.json"), "{e}");
    }

    /// A server without a tokenize route (most hosted OpenAI-compatible APIs) gets an error that
    /// says what to do instead.
    #[tokio::test]
    async fn a_missing_tokenize_route_names_the_fix() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found")
                    .await;
            }
        });
        let client = EngineClient::new(&url, vec![], 1).unwrap();
        let req = HttpRequest {
            method: "POST".into(),
            path: "/tokenize".into(),
            body: Some(serde_json::json!({"prompt": "{{prompt}}"})),
        };
        let e = Tokenizer::engine(req, "/tokens".into()).count(&client, "a b").await.unwrap_err();
        assert!(e.contains("answered HTTP 404"), "{e}");
        assert!(e.contains("give the model a local `tokenizer:`") && e.contains("`openai` engine template"), "{e}");
    }
}
