//! The channel's secure transport: the Noise handshake under the pre-shared
//! key, each Noise message framed by its 2-byte length, and the application
//! messages (4-byte length and body) carried inside, split into a writing and
//! a reading half.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::{key::Key, replication::channel::ChannelError};

/// The Noise protocol both ends speak.
const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// What the pre-shared key is derived with from the key file.
const PSK_LABEL: &[u8] = b"connmirror replication psk v1";
/// Largest Noise message.
const MAX_NOISE: usize = 65_535;
/// Largest plaintext in one Noise message (the AEAD tag takes 16 bytes).
const MAX_PLAIN: usize = MAX_NOISE - 16;
/// Largest application message accepted (a batch of records).
const MAX_MESSAGE: usize = 64 << 20;
/// A handshake that takes longer than this fails.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// One end of an established channel, split so that one task may read while
/// another writes.
pub struct Channel {
    /// Where the ciphertext goes.
    pub writer: Sealer,
    /// Where it comes from.
    pub reader: Opener,
}

/// Encrypts and writes messages.
pub struct Sealer {
    noise: Arc<Mutex<snow::TransportState>>,
    stream: OwnedWriteHalf,
    peer: SocketAddr,
    /// One framed Noise message: its 2-byte length, then the ciphertext.
    buf: Vec<u8>,
    /// A message's first Noise plaintext: its 4-byte length and first bytes.
    first: Vec<u8>,
}

/// Reads and decrypts messages.
pub struct Opener {
    noise: Arc<Mutex<snow::TransportState>>,
    stream: OwnedReadHalf,
    peer: SocketAddr,
    /// Decrypted bytes; the messages before `start` were taken.
    plain: Vec<u8>,
    start: usize,
    /// The Noise message being read.
    frame: Vec<u8>,
}

/// A fresh handshake under the pre-shared key derived from `key`.
fn handshake(key: &Key, initiator: bool) -> Result<snow::HandshakeState, snow::Error> {
    let params = PATTERN.parse().expect("a valid Noise pattern");
    let psk = key.derive(PSK_LABEL);
    let builder = snow::Builder::new(params).psk(0, &psk)?;
    match initiator {
        true => builder.build_initiator(),
        false => builder.build_responder(),
    }
}

impl Channel {
    /// Connects to the standby at `peer` and runs the handshake as initiator.
    pub async fn connect(peer: SocketAddr, key: &Key) -> Result<Self, ChannelError> {
        let io = |source| ChannelError::Io { peer, source };
        let mut stream = TcpStream::connect(peer).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let handshake = async {
            let mut noise = handshake(key, true).map_err(|e| refused(peer, e))?;
            let mut buf = vec![0u8; MAX_NOISE];
            let n = noise
                .write_message(&[], &mut buf)
                .map_err(|e| refused(peer, e))?;
            write_frame(&mut stream, &buf[..n]).await.map_err(io)?;
            let frame = match read_frame(&mut stream).await {
                Ok(frame) => frame,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ChannelError::Handshake {
                        peer,
                        reason: "the standby closed the connection".into(),
                    });
                }
                Err(err) => return Err(io(err)),
            };
            noise
                .read_message(&frame, &mut buf)
                .map_err(|e| refused(peer, e))?;
            noise.into_transport_mode().map_err(|e| refused(peer, e))
        };
        let noise = timed(peer, handshake).await?;
        Ok(Self::split(stream, noise, peer))
    }

    /// Runs the handshake as responder on an accepted connection.
    pub async fn accept(mut stream: TcpStream, key: &Key) -> Result<Self, ChannelError> {
        let peer = stream.peer_addr().map_err(|source| ChannelError::Io {
            peer: SocketAddr::from(([0u8; 4], 0)),
            source,
        })?;
        let io = |source| ChannelError::Io { peer, source };
        stream.set_nodelay(true).map_err(io)?;
        let handshake = async {
            let mut noise = handshake(key, false).map_err(|e| refused(peer, e))?;
            let mut buf = vec![0u8; MAX_NOISE];
            let frame = read_frame(&mut stream).await.map_err(io)?;
            noise
                .read_message(&frame, &mut buf)
                .map_err(|err| match err {
                    snow::Error::Decrypt => ChannelError::Handshake {
                        peer,
                        reason:
                            "its first handshake message failed authentication under the shared key"
                                .into(),
                    },
                    other => refused(peer, other),
                })?;
            let n = noise
                .write_message(&[], &mut buf)
                .map_err(|e| refused(peer, e))?;
            write_frame(&mut stream, &buf[..n]).await.map_err(io)?;
            noise.into_transport_mode().map_err(|e| refused(peer, e))
        };
        let noise = timed(peer, handshake).await?;
        Ok(Self::split(stream, noise, peer))
    }

    /// Shares the transport state between the writing and the reading half.
    fn split(stream: TcpStream, noise: snow::TransportState, peer: SocketAddr) -> Self {
        let noise = Arc::new(Mutex::new(noise));
        let (read, write) = stream.into_split();
        Self {
            writer: Sealer {
                noise: noise.clone(),
                stream: write,
                peer,
                buf: vec![0u8; 2 + MAX_NOISE],
                first: Vec::with_capacity(MAX_PLAIN),
            },
            reader: Opener {
                noise,
                stream: read,
                peer,
                plain: Vec::new(),
                start: 0,
                frame: vec![0u8; MAX_NOISE],
            },
        }
    }
}

/// `handshake`, failed once it takes longer than [`HANDSHAKE_TIMEOUT`].
async fn timed<T>(
    peer: SocketAddr,
    handshake: impl Future<Output = Result<T, ChannelError>>,
) -> Result<T, ChannelError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(result) => result,
        Err(_) => Err(ChannelError::Handshake {
            peer,
            reason: format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
        }),
    }
}

/// A handshake failure of Noise itself.
fn refused(peer: SocketAddr, err: snow::Error) -> ChannelError {
    ChannelError::Handshake {
        peer,
        reason: format!("noise: {err}"),
    }
}

/// Writes one Noise message with its 2-byte big-endian length.
async fn write_frame(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    frame: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(frame.len()).expect("Noise messages fit in 16 bits");
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(frame).await
}

/// Reads one Noise message framed by [`write_frame`].
async fn read_frame(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

impl Sealer {
    /// The other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Encrypts and sends one application message (any length up to
    /// [`MAX_MESSAGE`], in as many Noise messages as it takes). Only the
    /// first Noise message's plaintext is copied (behind the length).
    pub async fn send(&mut self, body: &[u8]) -> Result<(), ChannelError> {
        let split = body.len().min(MAX_PLAIN - 4);
        let mut first = std::mem::take(&mut self.first);
        first.clear();
        first.extend_from_slice(&(body.len() as u32).to_le_bytes());
        first.extend_from_slice(&body[..split]);
        let sent = self.seal(&first).await;
        self.first = first;
        sent?;
        for chunk in body[split..].chunks(MAX_PLAIN) {
            self.seal(chunk).await?;
        }
        Ok(())
    }

    /// Encrypts `plain` into one Noise message and writes it with its
    /// length, in one write.
    async fn seal(&mut self, plain: &[u8]) -> Result<(), ChannelError> {
        let Self {
            noise,
            stream,
            peer,
            buf,
            ..
        } = self;
        let n = {
            let mut noise = noise.lock().expect("noise state lock");
            (noise.write_message(plain, &mut buf[2..])).map_err(|err| ChannelError::Protocol {
                peer: *peer,
                reason: format!("encrypting: {err}"),
            })?
        };
        let len = u16::try_from(n).expect("Noise messages fit in 16 bits");
        buf[..2].copy_from_slice(&len.to_be_bytes());
        (stream.write_all(&buf[..2 + n]).await).map_err(|source| ChannelError::Io {
            peer: *peer,
            source,
        })
    }
}

impl Opener {
    /// The next application message; `None` once the peer closed cleanly
    /// between messages. Cancel-safe only between calls: keep the future alive.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        loop {
            if let Some(message) = self.pop()? {
                return Ok(Some(message));
            }
            if !self.receive().await? {
                return Ok(None);
            }
        }
    }

    /// Reads one Noise message and decrypts it onto the end of `plain`
    /// (dropping the messages already taken first); false when the peer
    /// closed cleanly between messages.
    async fn receive(&mut self) -> Result<bool, ChannelError> {
        let Self {
            noise,
            stream,
            peer,
            plain,
            start,
            frame,
        } = self;
        let io = |source| ChannelError::Io {
            peer: *peer,
            source,
        };
        let mut len = [0u8; 2];
        match stream.read_exact(&mut len).await {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof && plain.len() == *start => {
                return Ok(false);
            }
            Err(err) => return Err(io(err)),
        }
        let frame = &mut frame[..usize::from(u16::from_be_bytes(len))];
        stream.read_exact(frame).await.map_err(io)?;
        plain.drain(..*start);
        *start = 0;
        let end = plain.len();
        plain.resize(end + MAX_NOISE, 0);
        let n = {
            let mut noise = noise.lock().expect("noise state lock");
            (noise.read_message(frame, &mut plain[end..])).map_err(|err| ChannelError::Protocol {
                peer: *peer,
                reason: format!("a message failed authentication ({err})"),
            })
        };
        plain.truncate(end + n.as_ref().copied().unwrap_or(0));
        n.map(|_| true)
    }

    /// The next whole application message in the decrypted bytes, if any.
    fn pop(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        let Some(head) = self.plain[self.start..].first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*head) as usize;
        if len > MAX_MESSAGE {
            return Err(ChannelError::Protocol {
                peer: self.peer,
                reason: format!("a message of {len} bytes (at most {MAX_MESSAGE})"),
            });
        }
        let at = self.start + 4;
        if self.plain.len() < at + len {
            return Ok(None);
        }
        let message = self.plain[at..at + len].to_vec();
        self.start = at + len;
        Ok(Some(message))
    }
}
