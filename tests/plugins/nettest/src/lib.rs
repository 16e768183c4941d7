//! `send` with text `http:<url>` GETs the URL and answers with the body;
//! `tcp:<host:port>` connects, writes `ping\n` and answers with what it reads.
//! `tcphold:<n>:<host:port>` opens n connections at once and holds them to
//! the end of the call, `tcpcycle:<n>:<host:port>` opens and closes n one
//! after the other, `httphold:<n>:<url>` holds n responses unread; each
//! answers how many it opened and the first error.
//! `kv-set:<value>` stores the value under key `k` and `kv-get` answers with
//! it (empty when unset): the store is per channel.
//! Network errors come back as `transient(<error>)`, as a real channel would
//! report a connection failure; the host must still say it was a denial.

use switchboard_sdk::wstd;
use switchboard_sdk::wstd::io::{AsyncRead, AsyncWrite};
use switchboard_sdk::{
    export_channel, Account, Channel, ChannelError, Delivery, OutboundMessage, PluginInfo,
};

struct NetTest;

async fn http_get(url: &str) -> Result<String, String> {
    let req = wstd::http::Request::get(url)
        .body(wstd::http::Body::empty())
        .map_err(|e| e.to_string())?;
    let mut resp = wstd::http::Client::new()
        .send(req)
        .await
        .map_err(|e| format!("http: {e:?}"))?;
    let body = resp
        .body_mut()
        .str_contents()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_string())
}

async fn tcp_ping(addr: &str) -> Result<String, String> {
    let mut s = wstd::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    s.write_all(b"ping\n")
        .await
        .map_err(|e| format!("tcp write: {e}"))?;
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .await
        .map_err(|e| format!("tcp read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

impl Channel for NetTest {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "nettest".into(),
            name: "NetTest".into(),
            version: "0.1.0".into(),
            description: "reaches the network on request".into(),
            network: vec![],
            capabilities: switchboard_sdk::Capabilities::empty(),
        }
    }

    fn send(_account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
        let text = message.text;
        if let Some(v) = text.strip_prefix("kv-set:") {
            switchboard_sdk::kv::set("k", v.as_bytes());
            return Ok(Delivery {
                message_id: "stored".into(),
                chat_id: None,
            });
        }
        if text == "kv-get" {
            let v = switchboard_sdk::kv::get("k").unwrap_or_default();
            return Ok(Delivery {
                message_id: format!("value:{}", String::from_utf8_lossy(&v)),
                chat_id: None,
            });
        }
        let result = wstd::runtime::block_on(async {
            if let Some(rest) = text.strip_prefix("tcphold:") {
                let (n, addr) = rest.split_once(':').unwrap_or(("0", ""));
                let mut held = Vec::new();
                let mut error = None;
                for _ in 0..n.parse::<usize>().unwrap_or(0) {
                    match wstd::net::TcpStream::connect(addr).await {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            error = Some(e.to_string());
                            break;
                        }
                    }
                }
                Ok(format!("opened {}; error: {error:?}", held.len()))
            } else if let Some(rest) = text.strip_prefix("tcpcycle:") {
                let (n, addr) = rest.split_once(':').unwrap_or(("0", ""));
                let mut opened = 0;
                let mut error = None;
                for _ in 0..n.parse::<usize>().unwrap_or(0) {
                    match wstd::net::TcpStream::connect(addr).await {
                        Ok(s) => {
                            opened += 1;
                            drop(s);
                        }
                        Err(e) => {
                            error = Some(e.to_string());
                            break;
                        }
                    }
                }
                Ok(format!("opened {opened}; error: {error:?}"))
            } else if let Some(rest) = text.strip_prefix("httphold:") {
                let (n, url) = rest.split_once(':').unwrap_or(("0", ""));
                let mut held = Vec::new();
                let mut error = None;
                for _ in 0..n.parse::<usize>().unwrap_or(0) {
                    let req = wstd::http::Request::get(url)
                        .body(wstd::http::Body::empty())
                        .map_err(|e| e.to_string())?;
                    match wstd::http::Client::new().send(req).await {
                        Ok(r) => held.push(r),
                        Err(e) => {
                            error = Some(format!("{e:?}"));
                            break;
                        }
                    }
                }
                Ok(format!("opened {}; error: {error:?}", held.len()))
            } else if let Some(url) = text.strip_prefix("http:") {
                http_get(url).await
            } else if let Some(addr) = text.strip_prefix("tcp:") {
                tcp_ping(addr).await
            } else {
                Err("say http:<url> or tcp:<host:port>".into())
            }
        });
        result
            .map(|body| Delivery {
                message_id: body,
                chat_id: None,
            })
            .map_err(ChannelError::Transient)
    }
}

export_channel!(NetTest);
