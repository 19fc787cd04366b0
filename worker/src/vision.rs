//! Classify MULTIMODAL: page images and text sent to an OpenAI-compatible vision model.
//!
//! One chat-completions request per document: the rules, the parsed text of the first pages
//! and up to `vision.max_images` page images (PDF pages rendered at 100 dpi, or the image
//! itself), asking for a JSON answer `{type, confidence, reasoning}`. The answer must name one
//! of the rules' types; anything else fails the item rather than inventing a type.

use std::time::Duration;

use base64::Engine as _;
use docfleet_shared::model::ClassifyRule;
use docfleet_shared::settings::VisionSettings;
use serde_json::{json, Value};

use crate::classify::Classification;

/// Why a vision classification did not come back.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// Worth another try later: unreachable, timed out, 429 or 5xx.
    #[error("vision model endpoint: {0}")]
    Transient(String),
    /// Will fail again: a 4xx, or an answer that is not a classification.
    #[error("vision model endpoint: {0}")]
    Permanent(String),
}

/// A configured endpoint; one per worker process.
#[derive(Debug, Clone)]
pub struct VisionClient {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    /// Page images per document.
    pub max_images: usize,
}

/// Text sent per document: the first pages are what the rules are judged on.
const TEXT_CHARS: usize = 6_000;

impl VisionClient {
    /// A client for `settings`, or `None` when no endpoint is configured.
    pub fn new(settings: &VisionSettings) -> Result<Option<Self>, reqwest::Error> {
        let Some(url) = &settings.url else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs))
            .build()?;
        Ok(Some(Self {
            http,
            endpoint: format!("{}/chat/completions", url.trim_end_matches('/')),
            model: settings.model.clone(),
            api_key: settings.api_key.clone(),
            max_images: settings.max_images,
        }))
    }

    /// Classifies one document from its text and page images (`(mime, bytes)`).
    pub async fn classify(
        &self,
        rules: &[ClassifyRule],
        text: &str,
        images: &[(&'static str, Vec<u8>)],
    ) -> Result<Classification, VisionError> {
        let rule_list = rules
            .iter()
            .map(|r| format!("- {}: {}", r.kind, r.description))
            .collect::<Vec<_>>()
            .join("\n");
        let mut content = vec![json!({
            "type": "text",
            "text": format!(
                "Classify this document as exactly one of these types:\n{rule_list}\n\n\
                 Answer with a JSON object: {{\"type\": one of the types above, \"confidence\": \
                 a number from 0 to 1, \"reasoning\": the evidence in the document that decided \
                 it, and why the closest other type lost}}.\n\nThe document's text \
                 (first pages):\n{}",
                text.chars().take(TEXT_CHARS).collect::<String>()
            ),
        })];
        for (mime, bytes) in images.iter().take(self.max_images) {
            let data = base64::engine::general_purpose::STANDARD.encode(bytes);
            content.push(json!({
                "type": "image_url",
                "image_url": { "url": format!("data:{mime};base64,{data}") },
            }));
        }
        let body = json!({
            "model": self.model,
            "temperature": 0,
            "response_format": { "type": "json_object" },
            "messages": [
                { "role": "system", "content": "You classify documents by the user's rules and answer only with JSON." },
                { "role": "user", "content": content },
            ],
        });
        let mut req = self.http.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| VisionError::Transient(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| VisionError::Transient(e.to_string()))?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(VisionError::Transient(format!("HTTP {status}")));
        }
        if !status.is_success() {
            let snippet: String = text.chars().take(300).collect();
            return Err(VisionError::Permanent(format!("HTTP {status}: {snippet}")));
        }
        answer(rules, &text)
    }
}

/// Reads a chat-completions response into a classification.
fn answer(rules: &[ClassifyRule], body: &str) -> Result<Classification, VisionError> {
    let bad = |why: &str| VisionError::Permanent(format!("unusable answer: {why}"));
    let response: Value = serde_json::from_str(body).map_err(|_| bad("not JSON"))?;
    let content = response["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| bad("no choices[0].message.content"))?;
    // Some models wrap JSON in a code fence despite response_format.
    let content = content
        .trim()
        .trim_start_matches("```json")
        .trim_start_matches("```")
        .trim_end_matches("```");
    let verdict: Value = serde_json::from_str(content).map_err(|_| bad("content is not JSON"))?;
    let kind = verdict["type"]
        .as_str()
        .ok_or_else(|| bad("no \"type\""))?
        .trim();
    let rule = rules
        .iter()
        .find(|r| r.kind == kind)
        .or_else(|| rules.iter().find(|r| r.kind.eq_ignore_ascii_case(kind)))
        .ok_or_else(|| bad(&format!("type {kind:?} is none of the rules' types")))?;
    let confidence = verdict["confidence"]
        .as_f64()
        .unwrap_or(0.5)
        .clamp(0.0, 1.0);
    let reasoning = verdict["reasoning"]
        .as_str()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or("The vision model gave no reasoning.")
        .to_owned();
    Ok(Classification {
        kind: Some(rule.kind.clone()),
        confidence: (confidence * 1000.0).round() / 1000.0,
        reasoning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<ClassifyRule> {
        ["invoice", "resume"]
            .iter()
            .map(|k| ClassifyRule {
                kind: (*k).into(),
                description: format!("a {k}"),
                examples: Vec::new(),
            })
            .collect()
    }

    fn reply(content: &str) -> String {
        json!({ "choices": [{ "message": { "role": "assistant", "content": content } }] })
            .to_string()
    }

    #[test]
    fn reads_an_answer_and_refuses_an_invented_type() {
        let c = answer(
            &rules(),
            &reply(r#"{"type": "Invoice", "confidence": 1.7, "reasoning": "Total due"}"#),
        )
        .expect("answer");
        assert_eq!(c.kind.as_deref(), Some("invoice"));
        assert_eq!(c.confidence, 1.0);
        let err = answer(&rules(), &reply(r#"{"type": "letter", "confidence": 0.9}"#))
            .expect_err("unknown type");
        assert!(err.to_string().contains("none of the rules"), "{err}");
        assert!(answer(&rules(), "<html>").is_err());
    }
}
