//! One SMTP server session (RFC 5321 §4), generic over what is done with a
//! finished message ([`Handler`]): the relay spools it, the sink counts it.
//!
//! Flow: greeting, then a loop of "read a line, parse it (`command.rs`),
//! answer". Replies are buffered and flushed only when the client has sent
//! nothing more — that is all PIPELINING (RFC 2920) asks of a server, and it
//! turns a pipelined batch into one write.
//!
//! Every read is bounded three ways: the line length limit (an over-long line
//! is discarded up to its LF, answered `500 5.5.2`, and the session goes on),
//! the command timeout (`421 4.4.2`), and the drain "kick" of a suspended
//! listener or a shutdown (`421 4.3.2`). A kick is only looked at while
//! waiting for the client, never while a message is being made durable, so
//! an acknowledged message is never cut short.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::command::{Command, parse_command};
use crate::config::Limits;
use crate::spool::Envelope;

/// What a session does with a complete message.
pub trait Handler: Send + Sync + 'static {
    /// Takes a finished transaction; returns the reply line (no CRLF), e.g.
    /// `250 2.0.0 Ok: queued as ID` or `452 4.3.1 ...`.
    fn message(
        &self,
        ctx: MessageContext,
        envelope: Envelope,
        body: Vec<u8>,
    ) -> impl Future<Output = String> + Send;
}

/// Facts about the session a handler may record (e.g. in `Received:`).
#[derive(Debug, Clone)]
pub struct MessageContext {
    /// The client's address.
    pub peer: SocketAddr,
    /// What the client said in HELO/EHLO.
    pub helo: String,
}

/// Per-server settings shared by all its sessions.
pub(crate) struct SessionConfig {
    /// Our name in greeting and EHLO.
    pub hostname: String,
    /// Protocol limits.
    pub limits: Limits,
}

/// Result of waiting for one line from the client.
enum Event {
    /// A complete line (with its LF) is in the buffer.
    Line,
    /// A line longer than the limit was read and thrown away.
    TooLong,
    /// The client closed the connection (or died mid-line).
    Eof,
    /// No line within the command timeout.
    Timeout,
    /// The listener was suspended and the drain time is over, or shutdown.
    Kicked,
}

/// One client connection.
pub(crate) struct Session<H> {
    handler: Arc<H>,
    config: Arc<SessionConfig>,
    peer: SocketAddr,
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    /// Changes when sessions in progress must end (drain timeout, shutdown).
    kick: watch::Receiver<u64>,
    /// The current line, reused across reads.
    line: Vec<u8>,
    /// HELO/EHLO argument, None until the client greeted.
    helo: Option<String>,
    /// Reverse path of the transaction in progress.
    from: Option<String>,
    /// Forward paths of the transaction in progress.
    rcpts: Vec<String>,
    /// Commands answered with an error so far.
    errors: usize,
}

impl<H: Handler> Session<H> {
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        handler: Arc<H>,
        config: Arc<SessionConfig>,
        mut kick: watch::Receiver<u64>,
    ) -> Self {
        // Only kicks that happen after the session started concern it.
        kick.borrow_and_update();
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Session {
            handler,
            config,
            peer,
            reader: BufReader::with_capacity(16 * 1024, r),
            writer: BufWriter::with_capacity(16 * 1024, w),
            kick,
            line: Vec::with_capacity(1024),
            helo: None,
            from: None,
            rcpts: Vec::new(),
            errors: 0,
        }
    }

    /// Runs the session to its end; I/O errors just end it.
    pub(crate) async fn run(mut self) {
        if let Err(e) = self.converse().await {
            tracing::debug!(peer = %self.peer, error = %e, "session ended with an error");
        }
        let _ = self.writer.flush().await;
        let _ = self.writer.shutdown().await;
    }

    async fn converse(&mut self) -> io::Result<()> {
        let greeting = format!("220 {} ESMTP tandem-mta", self.config.hostname);
        self.reply(&greeting).await?;
        loop {
            match self.next_line().await? {
                Event::Line => {}
                Event::TooLong => {
                    self.reply("500 5.5.2 Error: line too long").await?;
                    if self.count_error().await? {
                        return Ok(());
                    }
                    continue;
                }
                Event::Eof => return Ok(()),
                Event::Timeout => return self.reply("421 4.4.2 Error: timeout exceeded").await,
                Event::Kicked => {
                    return self
                        .reply("421 4.3.2 Service shutting down, closing channel")
                        .await;
                }
            }
            let parsed = parse_command(&self.line);
            let cmd = match parsed {
                Ok(cmd) => cmd,
                Err(e) => {
                    self.reply(&e.reply()).await?;
                    if self.count_error().await? {
                        return Ok(());
                    }
                    continue;
                }
            };
            if !self.command(cmd).await? {
                return Ok(());
            }
        }
    }

    /// Answers one command; false when the session must end.
    async fn command(&mut self, cmd: Command) -> io::Result<bool> {
        match cmd {
            Command::Ehlo(domain) => {
                self.reset();
                self.helo = Some(domain);
                let h = &self.config.hostname;
                let size = self.config.limits.max_message_size;
                let text = format!(
                    "250-{h}\r\n250-PIPELINING\r\n250-SIZE {size}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 VRFY"
                );
                self.reply(&text).await?;
            }
            Command::Helo(domain) => {
                self.reset();
                self.helo = Some(domain);
                let text = format!("250 {}", self.config.hostname);
                self.reply(&text).await?;
            }
            Command::Mail { from, params } => {
                if self.helo.is_none() {
                    return self.error("503 5.5.1 Error: send HELO/EHLO first").await;
                }
                if self.from.is_some() {
                    return self.error("503 5.5.1 Error: nested MAIL command").await;
                }
                for (key, value) in &params {
                    match (key.as_str(), value.as_deref()) {
                        ("SIZE", Some(v)) => match v.parse::<u64>() {
                            Ok(n) if n > self.config.limits.max_message_size as u64 => {
                                return self
                                    .error("552 5.3.4 Message size exceeds fixed limit")
                                    .await;
                            }
                            Ok(_) => {}
                            Err(_) => return self.error("501 5.5.4 Bad SIZE parameter").await,
                        },
                        ("BODY", Some(v))
                            if v.eq_ignore_ascii_case("7BIT")
                                || v.eq_ignore_ascii_case("8BITMIME") => {}
                        _ => return self.error("555 5.5.4 Unsupported MAIL parameter").await,
                    }
                }
                self.from = Some(from);
                self.reply("250 2.1.0 Ok").await?;
            }
            Command::Rcpt { to, params } => {
                if self.from.is_none() {
                    return self.error("503 5.5.1 Error: need MAIL command").await;
                }
                if !params.is_empty() {
                    return self.error("555 5.5.4 Unsupported RCPT parameter").await;
                }
                if self.rcpts.len() >= self.config.limits.max_recipients {
                    // 4xx, not 5xx: the client sends the rest in a later transaction.
                    self.reply("452 4.5.3 Error: too many recipients").await?;
                    return Ok(true);
                }
                self.rcpts.push(to);
                self.reply("250 2.1.5 Ok").await?;
            }
            Command::Data => {
                if self.from.is_none() {
                    return self.error("503 5.5.1 Error: need MAIL command").await;
                }
                if self.rcpts.is_empty() {
                    return self.error("554 5.5.1 Error: no valid recipients").await;
                }
                self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
                return self.data().await;
            }
            Command::Rset => {
                self.reset();
                self.reply("250 2.0.0 Ok").await?;
            }
            Command::Noop => self.reply("250 2.0.0 Ok").await?,
            Command::Quit => {
                self.reply("221 2.0.0 Bye").await?;
                return Ok(false);
            }
            Command::Vrfy(_) => {
                self.reply(
                    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
                )
                .await?
            }
            Command::Help => self.reply("214 2.0.0 See RFC 5321").await?,
            Command::NotImplemented(_) => {
                return self.error("502 5.5.1 Error: command not implemented").await;
            }
        }
        Ok(true)
    }

    /// Reads the message after `354` up to the lone dot, then hands it over.
    async fn data(&mut self) -> io::Result<bool> {
        let max = self.config.limits.max_message_size;
        let mut body = Vec::with_capacity(8 * 1024);
        let mut too_big = false;
        let mut too_long = false;
        loop {
            match self.next_line().await? {
                Event::Line => {}
                Event::TooLong => {
                    too_long = true;
                    continue;
                }
                Event::Eof => return Ok(false),
                Event::Timeout => {
                    self.reply("421 4.4.2 Error: timeout exceeded").await?;
                    return Ok(false);
                }
                Event::Kicked => {
                    self.reply("421 4.3.2 Service shutting down, closing channel")
                        .await?;
                    return Ok(false);
                }
            }
            let line = &self.line[..];
            // Only CRLF.CRLF ends the message: a bare-LF dot is the SMTP
            // smuggling trick, and we keep it as text (it is re-stuffed on
            // the way out, so it cannot end the next hop's DATA either).
            if line == b".\r\n" {
                break;
            }
            if too_big || too_long {
                continue;
            }
            let content = line.strip_suffix(b"\n").unwrap_or(line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            let content = content.strip_prefix(b".").unwrap_or(content);
            if body.len() + content.len() + 2 > max {
                too_big = true;
                body = Vec::new();
                continue;
            }
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        let envelope = Envelope {
            from: self.from.take().unwrap_or_default(),
            rcpts: std::mem::take(&mut self.rcpts),
        };
        if too_long {
            self.reply("500 5.5.2 Error: message line too long").await?;
            return Ok(true);
        }
        if too_big {
            self.reply("552 5.3.4 Error: message size exceeds fixed limit")
                .await?;
            return Ok(true);
        }
        let ctx = MessageContext {
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
        };
        let answer = self.handler.message(ctx, envelope, body).await;
        self.reply(&answer).await?;
        Ok(true)
    }

    /// Clears the transaction (RSET, EHLO, after DATA).
    fn reset(&mut self) {
        self.from = None;
        self.rcpts.clear();
    }

    /// Sends an error reply; false (end session) after too many errors.
    async fn error(&mut self, text: &str) -> io::Result<bool> {
        self.reply(text).await?;
        Ok(!self.count_error().await?)
    }

    /// Counts an error; true if the session must now end.
    async fn count_error(&mut self) -> io::Result<bool> {
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            self.reply("421 4.7.0 Error: too many errors").await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Queues a reply; it goes out when the client's input is exhausted.
    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await
    }

    /// Waits for the next line, within the limits, timeout and kick.
    async fn next_line(&mut self) -> io::Result<Event> {
        if self.reader.buffer().is_empty() {
            // The client has nothing more pipelined: it now waits for us.
            self.writer.flush().await?;
        }
        let max = self.config.limits.max_line_length;
        let timeout = self.config.limits.command_timeout;
        tokio::select! {
            biased;
            Ok(()) = self.kick.changed() => Ok(Event::Kicked),
            r = tokio::time::timeout(timeout, read_line(&mut self.reader, &mut self.line, max)) => match r {
                Err(_) => Ok(Event::Timeout),
                Ok(r) => r,
            },
        }
    }
}

/// Reads up to and including LF into `buf`, at most `max` octets; a longer
/// line is consumed and dropped (`TooLong`) so the session stays in step.
async fn read_line(
    r: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Event> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Event::Eof);
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..=i], true),
            None => (avail, false),
        };
        let n = chunk.len();
        if !too_long {
            if buf.len() + n > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(n);
        if done {
            return Ok(if too_long {
                Event::TooLong
            } else {
                Event::Line
            });
        }
    }
}
