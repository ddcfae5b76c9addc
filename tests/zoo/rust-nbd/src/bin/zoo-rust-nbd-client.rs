//! The `nbd` crate's client (`nbd::client::handshake` + `NbdClient`), as its
//! examples/client.rs drives it: connect, write 4 KiB at 4096, flush, read 8 KiB from 0,
//! check the written bytes read back, then drop the client (the crate has no disconnect).
//! Usage: zoo-rust-nbd-client HOST:PORT EXPORT
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;

use nbd::client::{handshake, NbdClient};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().expect("HOST:PORT");
    let export_name = args.next().unwrap_or_default();
    let mut tcp = TcpStream::connect(address)?;
    let export = handshake(&mut tcp, export_name.as_bytes())?;
    println!("size {}", export.size);
    let mut client = NbdClient::new(&mut tcp, &export);
    let written: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    client.seek(SeekFrom::Start(4096))?;
    client.write_all(&written)?;
    client.flush()?;
    let mut read = vec![0; 8192];
    client.seek(SeekFrom::Start(0))?;
    client.read_exact(&mut read)?;
    assert_eq!(&read[4096..], &written[..], "read back differs from what was written");
    println!("ok");
    Ok(())
}
