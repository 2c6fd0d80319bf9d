//! A UDP echo server for the end-to-end tests' container image (busybox has
//! no UDP server): answers every datagram with "echo:" + its content.
//!   udp_echo PORT
use std::net::UdpSocket;

fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "81".to_string());
    let socket = UdpSocket::bind(format!("[::]:{port}"))
        .or_else(|_| UdpSocket::bind(format!("0.0.0.0:{port}")))
        .expect("bind UDP port");
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, peer);
        }
    }
}
