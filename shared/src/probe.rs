//! `probe`: a container healthcheck without curl in the image — GET a local URL, succeed on 2xx.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GETs `http://host:port/path` and returns whether the status is 2xx.
pub fn http_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(authority) else {
        return false;
    };
    for addr in addrs {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            continue;
        }
        let mut head = [0u8; 12];
        if s.read_exact(&mut head).is_ok() {
            return head.starts_with(b"HTTP/1.") && head[9] == b'2';
        }
    }
    false
}
