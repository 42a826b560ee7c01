//! `http-ceiling`: a minimal warp server answering 200, for the HTTP floor; with
//! `--verify-with CONFIG`, it first checks each request's signature with hookbridge's verifier
//! for the source the path names (401 when it fails), and does nothing else: the floor
//! "minimal HTTP server + the signature check" that hookbridge's CPU per request is set beside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

pub async fn run(listen: SocketAddr, verify_with: Option<&Path>) -> anyhow::Result<()> {
    use warp::Filter as _;
    let sources: Arc<HashMap<String, hookbridge::plan::SourceSpec>> = Arc::new(match verify_with {
        Some(path) => hookbridge::config::load_file(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .sources
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect(),
        None => HashMap::new(),
    });
    let verify = verify_with.is_some();
    // The ceiling server reads the whole body like any receiver must; content_length_limit
    // caps it, which is all this minimal server needs.
    #[allow(clippy::disallowed_methods)]
    let body = warp::body::content_length_limit(1 << 20).and(warp::body::bytes());
    let route = warp::post()
        .and(warp::path!("hooks" / String))
        .and(warp::header::headers_cloned())
        .and(body)
        .map(move |name: String, headers: HeaderMap, body: Bytes| {
            let ok = !verify
                || sources.get(&name).is_some_and(|s| {
                    let incoming = hookbridge::verify::IncomingWebhook { headers, body };
                    s.verifier.verify(incoming, SystemTime::now()).is_ok()
                });
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({ "status": "accepted" })),
                status,
            )
        });
    eprintln!("http ceiling server on {listen}");
    warp::serve(route).run(listen).await;
    Ok(())
}
