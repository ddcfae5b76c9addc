//! The `nbd` crate's server (`nbd::server::handshake` + `transmission`), as its
//! examples/server.rs drives it, on a kernel-chosen port of 127.0.0.1 with one in-memory
//! export whose bytes are a pattern. Prints "LISTENING tcp://127.0.0.1:PORT EXPORT", then
//! serves connections one after the other (as the example does) until killed.
//! Usage: zoo-rust-nbd-server SIZE_BYTES
use std::io::{Cursor, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use nbd::server::{handshake, transmission, Export};

fn serve(mut stream: TcpStream, disk: &Arc<Mutex<Vec<u8>>>) -> std::io::Result<()> {
    let size = disk.lock().unwrap().len() as u64;
    handshake(&mut stream, |_name| {
        Ok(Export { size, data: (), readonly: false, ..Default::default() })
    })?;
    // One shared image, so a later connection reads what an earlier one wrote.
    let image = std::mem::take(&mut *disk.lock().unwrap());
    let mut file = Cursor::new(image);
    let outcome = transmission(&mut stream, &mut file);
    *disk.lock().unwrap() = file.into_inner();
    outcome
}

fn main() {
    let size: usize = std::env::args().nth(1).expect("SIZE_BYTES").parse().expect("a number");
    let disk = Arc::new(Mutex::new((0..size).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>()));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local address").port();
    println!("LISTENING tcp://127.0.0.1:{port} disk");
    std::io::stdout().flush().expect("stdout");
    for stream in listener.incoming().flatten() {
        if let Err(error) = serve(stream, &disk) {
            eprintln!("error: {error}");
        }
    }
}
