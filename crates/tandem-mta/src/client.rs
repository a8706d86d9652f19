//! A small SMTP client: the delivery queue's way to the next hop, and the
//! load generator's way into a relay.
//!
//! One [`Client`] is one connection, reused for many messages (RSET between
//! failed transactions). With PIPELINING it sends `MAIL`, every `RCPT` and
//! `DATA` in one write and reads the replies after (RFC 2920), so a message
//! costs two round trips, not 3 + recipients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::{Error, Result};

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// Text of all lines, joined by a space.
    pub text: String,
}

impl Reply {
    /// 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 5xx: do not retry.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// The outcome of one transaction, recipient by recipient.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Reply to MAIL FROM.
    pub mail: Reply,
    /// Reply to each RCPT TO, in order (empty if MAIL failed).
    pub rcpts: Vec<Reply>,
    /// Final reply after the data (None if no recipient was accepted or MAIL failed).
    pub data: Option<Reply>,
}

/// An open SMTP connection, greeted and EHLO'd.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    peer: SocketAddr,
    pipelining: bool,
    reply_timeout: Duration,
    /// The last transaction failed half-way: send RSET before the next one.
    needs_rset: bool,
    /// The server's 220 line (its text names the host).
    greeting: String,
}

impl Client {
    /// Connects to `addr`, reads the greeting and sends EHLO (HELO if refused).
    pub async fn connect(
        addr: SocketAddr,
        helo: &str,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Client> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(format!("connect to {addr}")))?
            .map_err(|e| Error::Socket {
                what: "connect",
                addr: addr.to_string(),
                source: e,
            })?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut c = Client {
            reader: BufReader::with_capacity(16 * 1024, r),
            writer: BufWriter::with_capacity(64 * 1024, w),
            peer: addr,
            pipelining: false,
            reply_timeout,
            needs_rset: false,
            greeting: String::new(),
        };
        let greeting = c.read_reply().await?;
        if greeting.code != 220 {
            return Err(c.reply_error(greeting));
        }
        c.greeting = greeting.text;
        c.send_line(&format!("EHLO {helo}")).await?;
        let ehlo = c.read_reply().await?;
        if ehlo.is_ok() {
            c.pipelining = ehlo
                .text
                .split(' ')
                .any(|w| w.eq_ignore_ascii_case("PIPELINING"));
        } else {
            c.send_line(&format!("HELO {helo}")).await?;
            let helo = c.read_reply().await?;
            if !helo.is_ok() {
                return Err(c.reply_error(helo));
            }
        }
        Ok(c)
    }

    /// The text of the server's greeting; its first word is the host that
    /// answered (a relay under tandem names its node there).
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends one message. `body` has CRLF line endings and is not
    /// dot-stuffed. An `Err` means the connection is unusable; reply codes,
    /// including refusals, come back in the [`Transaction`].
    pub async fn send(&mut self, from: &str, rcpts: &[String], body: &[u8]) -> Result<Transaction> {
        if self.needs_rset {
            self.writer.write_all(b"RSET\r\n").await?;
            if !self.pipelining {
                self.writer.flush().await?;
                self.read_reply().await?;
            }
        }
        let rset_pending = self.needs_rset && self.pipelining;
        self.needs_rset = true;
        let tx = if self.pipelining {
            self.writer
                .write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
                .await?;
            for r in rcpts {
                self.writer
                    .write_all(format!("RCPT TO:<{r}>\r\n").as_bytes())
                    .await?;
            }
            self.writer.write_all(b"DATA\r\n").await?;
            self.writer.flush().await?;
            if rset_pending {
                self.read_reply().await?;
            }
            let mail = self.read_reply().await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            for _ in rcpts {
                replies.push(self.read_reply().await?);
            }
            let data = self.read_reply().await?;
            let accepted = mail.is_ok() && replies.iter().any(Reply::is_ok);
            if data.code != 354 {
                Transaction {
                    mail,
                    rcpts: replies,
                    // A refused DATA matters only if someone was accepted.
                    data: accepted.then_some(data),
                }
            } else if !accepted {
                // The server said 354 though nobody is left to deliver to:
                // end the empty message (RFC 2920 §3.1).
                self.send_line(".").await?;
                let _ = self.read_reply().await?;
                Transaction {
                    mail,
                    rcpts: replies,
                    data: None,
                }
            } else {
                let final_reply = self.send_body(body).await?;
                Transaction {
                    mail,
                    rcpts: replies,
                    data: Some(final_reply),
                }
            }
        } else {
            self.send_line(&format!("MAIL FROM:<{from}>")).await?;
            let mail = self.read_reply().await?;
            if !mail.is_ok() {
                return Ok(Transaction {
                    mail,
                    rcpts: vec![],
                    data: None,
                });
            }
            let mut replies = Vec::with_capacity(rcpts.len());
            for r in rcpts {
                self.send_line(&format!("RCPT TO:<{r}>")).await?;
                replies.push(self.read_reply().await?);
            }
            if !replies.iter().any(Reply::is_ok) {
                return Ok(Transaction {
                    mail,
                    rcpts: replies,
                    data: None,
                });
            }
            self.send_line("DATA").await?;
            let data = self.read_reply().await?;
            if data.code != 354 {
                return Ok(Transaction {
                    mail,
                    rcpts: replies,
                    data: Some(data),
                });
            }
            let final_reply = self.send_body(body).await?;
            Transaction {
                mail,
                rcpts: replies,
                data: Some(final_reply),
            }
        };
        if tx.data.as_ref().is_some_and(Reply::is_ok) {
            self.needs_rset = false;
        }
        Ok(tx)
    }

    /// Says QUIT and closes (errors ignored: the work is done).
    pub async fn quit(mut self) {
        let _ = self.send_line("QUIT").await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.read_reply()).await;
    }

    async fn send_body(&mut self, body: &[u8]) -> Result<Reply> {
        let stuffed = dot_stuff(body);
        self.writer.write_all(&stuffed).await?;
        self.writer.write_all(b".\r\n").await?;
        self.writer.flush().await?;
        self.read_reply().await
    }

    async fn send_line(&mut self, line: &str) -> Result<()> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        self.writer.flush().await?;
        Ok(())
    }

    fn reply_error(&self, r: Reply) -> Error {
        Error::Reply {
            peer: self.peer,
            code: r.code,
            text: r.text,
        }
    }

    /// Reads one (possibly multi-line) reply, within the reply timeout.
    async fn read_reply(&mut self) -> Result<Reply> {
        let peer = self.peer;
        tokio::time::timeout(self.reply_timeout, read_reply(&mut self.reader, peer))
            .await
            .map_err(|_| Error::Timeout(format!("reply from {peer}")))?
    }
}

async fn read_reply(reader: &mut BufReader<OwnedReadHalf>, peer: SocketAddr) -> Result<Reply> {
    let proto = |m: &str| Error::Protocol {
        peer,
        message: m.to_string(),
    };
    let mut text = String::new();
    let mut line = Vec::with_capacity(128);
    // A reply of more than 100 lines is not a reply we want to read.
    for _ in 0..100 {
        line.clear();
        let n = (&mut *reader)
            .take(4096)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(proto("connection closed"));
        }
        if line.len() < 4 || !line.ends_with(b"\n") {
            return Err(proto("malformed reply line"));
        }
        let code = std::str::from_utf8(&line[..3])
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| proto("reply without a valid code"))?;
        let body = String::from_utf8_lossy(&line[4..]);
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(body.trim_end());
        match line[3] {
            b'-' => continue,
            b' ' | b'\r' | b'\n' => return Ok(Reply { code, text }),
            _ => return Err(proto("malformed reply separator")),
        }
    }
    Err(proto("reply too long"))
}

/// Adds a dot to every line that starts with one (RFC 5321 §4.5.2) and makes
/// sure the body ends with CRLF.
pub(crate) fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 4);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n");
        assert_eq!(dot_stuff(b"x"), b"x\r\n");
        assert_eq!(dot_stuff(b""), b"");
    }
}
