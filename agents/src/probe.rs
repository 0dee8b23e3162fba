//! Whether a published port really reaches a listening service.
//!
//! A bare TCP connect is not enough: Docker's userland proxy accepts on the
//! published port as soon as the container starts and only then dials the
//! service, closing the connection at once when nothing listens. So after
//! connecting, a short read tells the two apart: an immediate EOF or reset
//! means the proxy found no one; silence (or data) means a live service.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

const CONNECT: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_millis(300);

pub async fn accepts(host: &str, port: u16) -> bool {
    let Ok(Ok(mut stream)) = timeout(CONNECT, TcpStream::connect((host, port))).await else {
        return false;
    };
    let mut byte = [0u8; 1];
    match timeout(SETTLE, stream.read(&mut byte)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_listening_service_is_seen() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(socket);
        });
        assert!(accepts("127.0.0.1", port).await);
        server.abort();
    }

    #[tokio::test]
    async fn a_proxy_that_hangs_up_at_once_is_not_a_service() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                drop(socket);
            }
        });
        assert!(!accepts("127.0.0.1", port).await);
        server.abort();
    }

    #[tokio::test]
    async fn nothing_listening_is_not_a_service() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(!accepts("127.0.0.1", port).await);
    }
}
