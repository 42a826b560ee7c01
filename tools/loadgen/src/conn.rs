//! The generator's HTTP/1.1 client: one keep-alive connection, nothing more.

use std::net::SocketAddr;

use anyhow::Context as _;

/// One keep-alive HTTP/1.1 connection speaking only what this tool needs: a pre-serialized
/// request out, a `content-length` response parsed with httparse back. The generator shares the
/// cores with the server it measures, so it spends as little as it can per request (as wrk does);
/// a full client (hyper's) cost it about as much CPU as the server's own HTTP layer.
pub struct Conn {
    tcp: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp,
            buf: bytes::BytesMut::with_capacity(4096),
        })
    }

    /// Sends one request and reads its response: the status, and whether the server is closing
    /// the connection.
    pub async fn send(&mut self, wire: &[u8]) -> anyhow::Result<(u16, bool)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        self.tcp.write_all(wire).await?;
        self.buf.clear();
        let (status, close, end) = loop {
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                anyhow::bail!("connection closed before a complete response");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = resp.parse(&self.buf)? else {
                continue;
            };
            let mut length = None;
            let mut close = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = Some(std::str::from_utf8(h.value)?.trim().parse::<usize>()?);
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            let length = length.context("response without content-length")?;
            break (resp.code.context("status")?, close, head + length);
        };
        while self.buf.len() < end {
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                anyhow::bail!("connection closed inside the response body");
            }
        }
        anyhow::ensure!(self.buf.len() == end, "bytes after the response");
        Ok((status, close))
    }
}
