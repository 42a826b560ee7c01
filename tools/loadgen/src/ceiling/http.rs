//! `http-ceiling`: a minimal warp server answering 200, for the HTTP ceiling.

use std::net::SocketAddr;

use bytes::Bytes;

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    use warp::Filter as _;
    // The ceiling server reads the whole body like any receiver must; content_length_limit
    // caps it, which is all this minimal server needs.
    #[allow(clippy::disallowed_methods)]
    let body = warp::body::content_length_limit(1 << 20).and(warp::body::bytes());
    let route = warp::post()
        .and(warp::path!("hooks" / String))
        .and(body)
        .map(|_name: String, _body: Bytes| {
            warp::reply::json(&serde_json::json!({ "status": "accepted" }))
        });
    eprintln!("http ceiling server on {listen}");
    warp::serve(route).run(listen).await;
    Ok(())
}
