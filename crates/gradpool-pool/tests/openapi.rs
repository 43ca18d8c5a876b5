//! `GET /v1/openapi.json`: an OpenAPI 3 document of every route the pool
//! serves, each of its operations answered by a handler (never the
//! router's fallback), the same routes as the API's table in
//! `gradpool_core::wire`, and every schema it names defined in it.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// `(METHOD, /path/{param})` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// The routes of the table in `gradpool_core::wire`'s documentation.
fn wire_table() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gradpool-core/src/wire.rs"),
    )
    .unwrap();
    let mut out = BTreeSet::new();
    for line in source.lines() {
        let Some(row) = line.strip_prefix("//! | `") else {
            continue;
        };
        let route = row.split('`').next().unwrap();
        let (method, path) = route.split_once(' ').unwrap();
        out.insert((method.to_owned(), path.trim().to_owned()));
    }
    assert!(out.len() > 30, "the table was read: {out:?}");
    out
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_route_is_described_and_every_description_is_served() {
    let pool = TestPool::start().await;
    let resp = pool
        .anon()
        .req(reqwest::Method::GET, "/v1/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc,
        serde_json::to_value(gradpool_pool::api::openapi()).unwrap()
    );

    // The same routes as the API's table, no more, no fewer.
    let described = operations(&doc);
    let table = wire_table();
    assert_eq!(
        described.difference(&table).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "described but not in gradpool_core::wire's table"
    );
    assert_eq!(
        table.difference(&described).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in gradpool_core::wire's table but not described"
    );

    // Each described operation reaches a handler: whatever it answers to
    // an empty, unauthenticated request, it is not the router's fallback
    // (404 "no such route") nor 405.
    let client = pool.anon();
    for (method, path) in &described {
        let concrete = path
            .replace("{sha256}", &"ab".repeat(32))
            .replace("{id}", "job_0000000000000000");
        let resp = client
            .req(method.parse().unwrap(), &concrete)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !(status == 404 && body.contains("no such route")),
            "{method} {path} is described but not routed: {body}"
        );
    }
    // And an undescribed path is the fallback.
    let resp = client
        .req(reqwest::Method::GET, "/v1/nothing-here")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("no such route"));

    // Every operation says what it answers, errors included; every
    // schema it names is defined.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|k| k.starts_with('2')),
                    "{method} {path}"
                );
                if path != "/v1/openapi.json" {
                    assert!(responses.contains_key("4XX"), "{method} {path}");
                }
            }
        }
    }
    let mut named = Vec::new();
    refs(&doc, &mut named);
    assert!(named.len() > 30, "{}", named.len());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for r in named {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(schemas.contains_key(name), "{r} is named but not defined");
    }
    // A state is one of its spellings; a job spec names its fields.
    let status = &schemas["JobStatus"]["enum"];
    assert!(
        status.as_array().unwrap().iter().any(|s| s == "succeeded"),
        "{status}"
    );
    assert!(schemas["JobSpecToml"]["properties"]["model"].is_object());
    // Both credentials are declared.
    let security = &doc["components"]["securitySchemes"];
    assert_eq!(security["api_key"]["scheme"], "bearer");
    assert_eq!(security["session"]["scheme"], "bearer");
}

/// The API has no way in but the described routes: `api.rs` names no
/// route outside `routes!` (the dashboard's pages, `dashboard.rs`, are
/// not the API).
#[test]
fn the_api_routes_nothing_undescribed() {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api.rs"),
    )
    .unwrap();
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap();
        assert!(
            !code.contains(".route(") && !code.contains(".nest("),
            "src/api.rs:{}: a route outside routes!: {line}",
            n + 1
        );
    }
}
