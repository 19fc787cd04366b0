//! The classify engine (first cut): lexical evidence, scored honestly.
//!
//! Each rule becomes a bag of terms (its type counts twice, its description once). A term's
//! weight is its rarity across the rules, so words every rule shares decide nothing. A rule's
//! score is the weighted share of its terms found in the document. Confidence combines how
//! much of the winner was found with how far it is ahead of the runner-up, so a weak or a
//! close call never comes out confident. The reasoning names the matched terms of both.

use std::collections::HashMap;

use docfleet_shared::model::ClassifyRule;
use serde::Serialize;

/// A classification.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    /// The chosen rule's type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// 0..1.
    pub confidence: f64,
    /// The evidence, for a person to check.
    pub reasoning: String,
}

const STOPWORDS: &[&str] = &[
    "a",
    "an",
    "and",
    "are",
    "as",
    "at",
    "be",
    "by",
    "for",
    "from",
    "has",
    "have",
    "in",
    "is",
    "it",
    "its",
    "of",
    "on",
    "or",
    "that",
    "the",
    "this",
    "to",
    "was",
    "were",
    "with",
    "which",
    "such",
    "any",
    "other",
    "e",
    "g",
    "eg",
    "ie",
    "etc",
    "document",
    "documents",
    "contains",
    "containing",
    "usually",
    "often",
    "typically",
    "like",
    "about",
    "their",
    "they",
    "them",
    "these",
    "those",
    "who",
    "what",
    "when",
    "where",
    "will",
    "can",
    "may",
    "one",
    "more",
];

/// Lower-cased words without stopwords.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(|w| w.to_lowercase())
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
}

/// Word stems: a light suffix strip so `invoices`/`invoiced` meet `invoice`.
fn terms(text: &str) -> Vec<String> {
    words(text).map(|w| stem(&w)).collect()
}

fn stem(w: &str) -> String {
    for suffix in ["ing", "ies", "es", "ed", "s"] {
        if let Some(base) = w.strip_suffix(suffix) {
            if base.chars().count() >= 3 {
                return if suffix == "ies" {
                    format!("{base}y")
                } else {
                    base.to_owned()
                };
            }
        }
    }
    w.to_owned()
}

/// Rules prepared once per batch.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<(String, HashMap<String, f64>)>,
}

impl Classifier {
    /// Prepares `rules`.
    pub fn new(rules: &[ClassifyRule]) -> Self {
        let bags: Vec<(String, HashMap<String, f64>)> = rules
            .iter()
            .map(|r| {
                let mut bag: HashMap<String, f64> = HashMap::new();
                for t in terms(&r.kind) {
                    *bag.entry(t).or_default() += 2.0;
                }
                for t in terms(&r.description) {
                    *bag.entry(t).or_default() += 1.0;
                }
                (r.kind.clone(), bag)
            })
            .collect();
        let n = bags.len() as f64;
        let mut df: HashMap<&str, f64> = HashMap::new();
        for (_, bag) in &bags {
            for t in bag.keys() {
                *df.entry(t.as_str()).or_default() += 1.0;
            }
        }
        let rules = bags
            .iter()
            .map(|(kind, bag)| {
                let weighted = bag
                    .iter()
                    .map(|(t, count)| {
                        let idf = (1.0 + n / df.get(t.as_str()).copied().unwrap_or(1.0)).ln();
                        (t.clone(), count.sqrt() * idf)
                    })
                    .collect();
                (kind.clone(), weighted)
            })
            .collect();
        Self { rules }
    }

    /// Classifies a document's text.
    pub fn classify(&self, text: &str) -> Classification {
        // Each stem maps to the first word the document spelled it with, for the reasoning.
        let mut doc: HashMap<String, String> = HashMap::new();
        for word in words(text) {
            doc.entry(stem(&word)).or_insert(word);
        }
        if doc.is_empty() {
            return Classification {
                kind: self.rules.first().map(|(k, _)| k.clone()),
                confidence: 0.0,
                reasoning: "The document has no readable text, so no rule could be matched; \
                            the first rule is returned with zero confidence."
                    .into(),
            };
        }
        let mut scored: Vec<(f64, &str, Vec<&str>)> = self
            .rules
            .iter()
            .map(|(kind, bag)| {
                let total: f64 = bag.values().sum();
                let mut hits: Vec<(&str, f64)> = bag
                    .iter()
                    .filter_map(|(t, w)| doc.get(t).map(|surface| (surface.as_str(), *w)))
                    .collect();
                hits.sort_by(|a, b| b.1.total_cmp(&a.1));
                // 0.0 + …: an empty f64 sum is -0.0, which would print as "-0%".
                let found: f64 = 0.0 + hits.iter().map(|h| h.1).sum::<f64>();
                let score = if total > 0.0 { found / total } else { 0.0 };
                (
                    score,
                    kind.as_str(),
                    hits.into_iter().map(|h| h.0).collect(),
                )
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (best, kind, hits) = &scored[0];
        let runner = scored.get(1);
        let second = runner.map(|r| r.0).unwrap_or(0.0);
        // Ahead by a clear margin and with a good share of its terms found: both are needed.
        let margin = if *best > 0.0 {
            (best - second) / best
        } else {
            0.0
        };
        let strength = (best / 0.35).min(1.0);
        // Lexical evidence alone never justifies certainty, hence the 0.95 ceiling.
        let confidence = ((0.15 + 0.85 * margin) * strength).clamp(0.0, 0.95);
        let show = |h: &[&str]| {
            if h.is_empty() {
                "no terms".to_owned()
            } else {
                h.iter()
                    .take(8)
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut reasoning = format!(
            "Rule '{kind}' matched {} ({:.0}% of its weighted terms).",
            show(hits),
            best * 100.0
        );
        if let Some((s, k, h)) = runner {
            reasoning.push_str(&format!(
                " Runner-up '{k}' matched {} ({:.0}%).",
                show(h),
                s * 100.0
            ));
        }
        if *best < 0.1 {
            reasoning.push_str(" This is a weak match: no rule fits the document well.");
        } else if margin < 0.2 {
            reasoning.push_str(" The two are close, so confidence is low.");
        }
        Classification {
            kind: Some(kind.to_string()),
            confidence: (confidence * 1000.0).round() / 1000.0,
            reasoning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<ClassifyRule> {
        vec![
            ClassifyRule {
                kind: "invoice".into(),
                description: "A bill requesting payment, with line items, amounts and a total due"
                    .into(),
            },
            ClassifyRule {
                kind: "resume".into(),
                description: "A CV listing a person's work experience, education and skills".into(),
            },
        ]
    }

    #[test]
    fn picks_the_matching_rule_and_explains_it() {
        let c = Classifier::new(&rules());
        let r =
            c.classify("INVOICE #123. Payment due in 30 days. Total due: $400. Line items below.");
        assert_eq!(r.kind.as_deref(), Some("invoice"));
        assert!(r.confidence > 0.5, "{r:?}");
        assert!(r.reasoning.contains("'invoice'") && r.reasoning.contains("Runner-up 'resume'"));
        let r = c.classify("Work experience: 5 years. Education: MSc. Skills: Rust.");
        assert_eq!(r.kind.as_deref(), Some("resume"));
    }

    #[test]
    fn weak_matches_are_not_confident() {
        let c = Classifier::new(&rules());
        let r = c.classify("The quick brown fox jumps over the lazy dog.");
        assert!(r.confidence < 0.2, "{r:?}");
        assert!(r.reasoning.contains("weak match"));
    }
}
