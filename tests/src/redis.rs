//! The bed's Redis, spoken to in raw RESP over TCP: enough to prove that credentials Vault's
//! database engine issued work (`AUTH`) and that revoked ones are gone (`ACL USERS`).

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::BedEnv;

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A connection to Redis.
#[derive(Debug)]
pub struct Redis {
    stream: BufReader<TcpStream>,
}

impl Redis {
    pub async fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to Redis at {addr}"))?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// The bed's Redis as its admin (the `default` user), or an explanation of how to get it.
    pub async fn admin(env: &BedEnv) -> Result<Self> {
        let redis = env.redis.as_ref().context(
            "the bed has no Redis: run `scripts/testbed build && scripts/testbed up` (up adds it to a running bed)",
        )?;
        let password = std::fs::read_to_string(&redis.password_file)
            .with_context(|| format!("reading {}", redis.password_file.display()))?;
        let mut conn = Self::connect(&redis.addr).await?;
        match conn.command(&["AUTH", password.trim()]).await? {
            Reply::Simple(ok) if ok == "OK" => Ok(conn),
            other => bail!("admin AUTH to the bed's Redis failed: {other:?}"),
        }
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&str]) -> Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await?;
        self.read_reply().await
    }

    /// `AUTH user password`: whether Redis accepted the credentials.
    pub async fn auth(&mut self, user: &str, password: &str) -> Result<bool> {
        Ok(match self.command(&["AUTH", user, password]).await? {
            Reply::Simple(ok) => ok == "OK",
            _ => false,
        })
    }

    /// Every ACL user name.
    pub async fn acl_users(&mut self) -> Result<Vec<String>> {
        match self.command(&["ACL", "USERS"]).await? {
            Reply::Array(Some(items)) => Ok(items
                .into_iter()
                .filter_map(|i| match i {
                    Reply::Bulk(Some(b)) => String::from_utf8(b).ok(),
                    _ => None,
                })
                .collect()),
            other => bail!("ACL USERS answered {other:?}"),
        }
    }

    fn read_reply(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply>> + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            let line = line.trim_end_matches("\r\n");
            let (kind, rest) = line.split_at_checked(1).context("empty RESP reply")?;
            Ok(match kind {
                "+" => Reply::Simple(rest.to_owned()),
                "-" => Reply::Error(rest.to_owned()),
                ":" => Reply::Integer(rest.parse()?),
                "$" => {
                    let len: i64 = rest.parse()?;
                    if len < 0 {
                        Reply::Bulk(None)
                    } else {
                        let mut buf = vec![0u8; len as usize + 2];
                        self.stream.read_exact(&mut buf).await?;
                        buf.truncate(len as usize);
                        Reply::Bulk(Some(buf))
                    }
                }
                "*" => {
                    let len: i64 = rest.parse()?;
                    if len < 0 {
                        Reply::Array(None)
                    } else {
                        let mut items = Vec::with_capacity(len as usize);
                        for _ in 0..len {
                            items.push(self.read_reply().await?);
                        }
                        Reply::Array(Some(items))
                    }
                }
                other => bail!("unknown RESP reply type {other:?}"),
            })
        })
    }
}
