//! An OpenAPI description as a test oracle: every answer of a call must have a status the
//! description lists for its operation, and a body valid for the listed schema.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// An HTTP client that does not follow redirects: a client sends its token again to the home
/// node, and the tests look at the redirect itself.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The served OpenAPI document, and the operations the test saw answered.
pub struct Api {
    pub doc: Value,
    /// (method, path template) of every call made.
    pub seen: BTreeSet<(String, String)>,
}

impl Api {
    pub async fn load(base: &str) -> Api {
        let resp = http()
            .get(format!("{base}/v1/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let doc: Value = resp.json().await.unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        Api {
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// Calls `method path` (`path` matching the documented `template`) on `base` with `token`,
    /// and checks the answer against the description: a documented status, and a body valid
    /// for the documented schema. Returns the status and the body (JSON, or Null).
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &mut self,
        base: &str,
        method: Method,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, Option<String>) {
        let mut req = http().request(method.clone(), format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        };
        let m = method.as_str().to_lowercase();
        let op = &self.doc["paths"][template][&m];
        assert!(op.is_object(), "{m} {template} is not documented");
        let documented = &op["responses"][status.as_str()];
        assert!(
            documented.is_object(),
            "{m} {path}: status {status} is not documented for it; body {value}"
        );
        if let Some(schema) = documented["content"]["application/json"]["schema"].as_object() {
            let mut root = self.doc.clone();
            root["$ref"] = schema["$ref"].clone();
            let validator = jsonschema::draft202012::new(&root).expect("a valid schema");
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{m} {path} {status}: {errors:?}\n{value}"
            );
        }
        self.seen.insert((m, template.to_string()));
        (status, value, location)
    }
}
