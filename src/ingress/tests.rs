//! Filter-level tests: `warp::test` against `routes()` with a file sink in a temp dir.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::*;

async fn state(dir: &std::path::Path, sources: &str) -> Arc<State> {
    let text = format!(
        "[sinks.f]\ntype = \"file\"\npath = \"{}\"\n{sources}",
        dir.join("events.jsonl").display()
    );
    let cfg = crate::config::load(&text, &|_| None).unwrap();
    let sinks = Sinks::start(&cfg.sinks, &cfg.sources).await.unwrap();
    let routes = cfg
        .sources
        .into_iter()
        .map(|spec| {
            let sink = Arc::clone(sinks.get(&spec.sink).unwrap());
            let route = Route::new(spec, sink, None, (64, 1000));
            (route.spec.name.clone(), Arc::new(route))
        })
        .collect();
    Arc::new(State {
        routes: arc_swap::ArcSwap::from_pointee(routes),
        retired: std::sync::Mutex::default(),
        sinks,
        body_timeout: Duration::from_secs(5),
        metrics: None,
        proxies: crate::ingress::client::Proxies::default(),
        require_tls: false,
        tls_listener: false,
        spool: None,
        dedup: Arc::new(crate::dedup::Dedup::memory(
            Duration::from_secs(60),
            Duration::from_secs(30),
            1000,
        )),
        decisions: Arc::new(crate::callback::store::DecisionStore::memory(
            crate::callback::store::Limits {
                ttl: Duration::from_secs(60),
                asked_ttl: Duration::from_secs(60),
                max_entries: 1000,
            },
        )),
        in_flight: Arc::new(tokio::sync::Semaphore::new(100)),
        body_budget: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
        background: crate::ingress::Background::default(),
        tracer: None,
    })
}

const TOKEN: &str = "[sources.t]\nverify = { scheme = \"shared-secret\", header = \"x-token\", secrets = [\"tok\"] }\nevent_id = [\"/id\"]\nmax_body_bytes = 64\n";

fn events(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn accepted_request_is_on_disk_before_the_200() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(state(dir.path(), TOKEN).await, Serve::All);
    let resp = warp::test::request()
        .method("POST")
        .path("/hooks/t")
        .header("x-token", "tok")
        .body(r#"{"id":"e1"}"#)
        .reply(&routes)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp.body())["id"], "e1");
    let events = events(dir.path());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], "e1");
    assert_eq!(events[0]["data"], serde_json::json!({ "id": "e1" }));
}

#[tokio::test]
async fn rejections_have_their_status_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(state(dir.path(), TOKEN).await, Serve::All);
    // (method, path, token, body, status, reason)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/hooks/t",
            Some("nope"),
            "{}".into(),
            401,
            "bad_signature",
        ),
        (
            "POST",
            "/hooks/t",
            None,
            "{}".into(),
            401,
            "missing_signature",
        ),
        (
            "POST",
            "/hooks/unknown",
            Some("tok"),
            "{}".into(),
            404,
            "unknown_source",
        ),
        (
            "PUT",
            "/hooks/t",
            Some("tok"),
            "{}".into(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/hooks/t",
            Some("tok"),
            "x".repeat(65),
            413,
            "too_large",
        ),
        (
            "POST",
            "/hooks/t",
            Some("tok"),
            format!("{{\"id\":\"{}\"}}", "\\n"),
            400,
            "malformed_event",
        ),
        (
            "POST",
            "/nowhere",
            Some("tok"),
            "{}".into(),
            404,
            "not_found",
        ),
    ];
    for (method, path, token, body, status, reason) in cases {
        let mut req = warp::test::request().method(method).path(path).body(body);
        if let Some(t) = token {
            req = req.header("x-token", t);
        }
        let resp = req.reply(&routes).await;
        assert_eq!(resp.status(), status, "{method} {path} {reason}");
        assert_eq!(json(resp.body())["error"], reason);
    }
    assert!(events(dir.path()).is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_without_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path(), TOKEN).await;
    let route = Arc::clone(st.routes.load().get("t").unwrap());
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, warp::Error>(Bytes::from_static(b"0123456789"))),
    );
    let err = handler_read_capped(chunks, route.spec.max_body_bytes)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "too_large");
}

async fn handler_read_capped<S>(s: S, limit: usize) -> Result<Bytes, Rejection>
where
    S: futures_util::Stream<Item = Result<Bytes, warp::Error>> + Send,
{
    super::handler::read_capped_for_tests(s, limit).await
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(state(dir.path(), TOKEN).await, Serve::All);
    let resp = warp::test::request().path("/healthz").reply(&routes).await;
    assert_eq!(resp.status(), 200);
    let resp = warp::test::request().path("/readyz").reply(&routes).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp.body())["sinks"]["f"]["ready"], true);
}

#[tokio::test]
async fn each_listener_serves_only_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path(), TOKEN).await;
    let hooks = routes(Arc::clone(&st), Serve::Hooks);
    let admin = routes(st, Serve::Admin);
    for path in ["/healthz", "/readyz", "/metrics"] {
        // `/healthz` says only "alive": load balancers probe it on the traffic port.
        assert_eq!(
            warp::test::request()
                .path(path)
                .reply(&hooks)
                .await
                .status(),
            if path == "/healthz" { 200 } else { 404 },
            "{path} on hooks"
        );
        assert_eq!(
            warp::test::request()
                .path(path)
                .reply(&admin)
                .await
                .status(),
            200,
            "{path} on admin"
        );
    }
    let post = |r| {
        warp::test::request()
            .method("POST")
            .path("/hooks/t")
            .header("x-token", "tok")
            .body(r#"{"id":"e9"}"#)
            .reply(r)
    };
    assert_eq!(post(&admin).await.status(), 404);
    assert_eq!(post(&hooks).await.status(), 200);
}
