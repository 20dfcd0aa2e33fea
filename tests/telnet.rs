//! `--telnet` over a real socket, byte by byte: what the server offers, what it takes out
//! of the stream, what it answers, and that without the flag every byte stays opaque.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{assert_echo, TestServer};
use kv_server::{Config, Echo};

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const EL: u8 = 248;
const EC: u8 = 247;
const AYT: u8 = 246;
const IP: u8 = 244;
const SE: u8 = 240;
const BINARY: u8 = 0;
const ECHO: u8 = 1;
const TIMING_MARK: u8 = 6;

fn telnet_server() -> TestServer {
    let config = Config {
        telnet: true,
        ..Config::default()
    };
    TestServer::start_with(config, Box::new(Echo))
}

/// A connection that has read the server's offers and agreed to them.
fn negotiated(server: &TestServer) -> TcpStream {
    let mut stream = server.connect();
    let mut offers = [0u8; 6];
    stream.read_exact(&mut offers).unwrap();
    assert_eq!(offers, [IAC, WILL, BINARY, IAC, DO, BINARY]);
    stream
        .write_all(&[IAC, DO, BINARY, IAC, WILL, BINARY])
        .unwrap();
    stream
}

fn expect(stream: &mut TcpStream, bytes: &[u8]) {
    let mut back = vec![0u8; bytes.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, bytes);
}

#[test]
fn commands_are_taken_out_and_0xff_escaped_both_ways() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    // Data with an escaped 0xFF, commands and a sub-negotiation in the middle.
    let mut sent = b"h\xc3\xa9llo ".to_vec();
    sent.extend_from_slice(&[
        IAC, IAC, b' ', IAC, SB, 24, 0, b'x', IAC, SE, b'!', b'\r', b'\n',
    ]);
    stream.write_all(&sent).unwrap();
    expect(
        &mut stream,
        &[
            b'h', 0xc3, 0xa9, b'l', b'l', b'o', b' ', IAC, IAC, b' ', b'!', b'\r', b'\n',
        ],
    );
}

#[test]
fn ctrl_c_discards_the_line_and_the_timing_mark_is_answered_after_earlier_echoes() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    let mut sent = b"done\r\nhalf a li".to_vec();
    sent.extend_from_slice(&[IAC, IP, IAC, DO, TIMING_MARK]);
    sent.extend_from_slice(b"next\r\n");
    stream.write_all(&sent).unwrap();
    let mut wanted = b"done\r\n".to_vec();
    wanted.extend_from_slice(&[IAC, WILL, TIMING_MARK]);
    wanted.extend_from_slice(b"next\r\n");
    expect(&mut stream, &wanted);
}

#[test]
fn erase_character_and_erase_line_edit_the_unfinished_line() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream.write_all(b"wrong").unwrap();
    stream.write_all(&[IAC, EL]).unwrap();
    stream.write_all(b"rigth").unwrap();
    stream.write_all(&[IAC, EC, IAC, EC]).unwrap();
    stream.write_all(b"ht\r\n").unwrap();
    expect(&mut stream, b"right\r\n");
}

#[test]
fn are_you_there_is_answered_and_other_options_are_refused() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream.write_all(&[IAC, AYT]).unwrap();
    expect(&mut stream, b"\r\n[kv_server: yes, here]\r\n");
    stream.write_all(&[IAC, DO, ECHO, IAC, WILL, 24]).unwrap();
    expect(&mut stream, &[IAC, WONT, ECHO, IAC, DONT, 24]);
    assert_echo(&mut stream, b"still echoing\r\n");
}

#[test]
fn an_endless_subnegotiation_is_cut_off() {
    let server = telnet_server();
    let mut stream = negotiated(&server);
    stream.write_all(&[IAC, SB, 24]).unwrap();
    let junk = vec![7u8; 128 * 1024];
    let _ = stream.write_all(&junk);
    assert!(common::closed_within(&mut stream, common::TIMEOUT));
    assert_echo(&mut negotiated(&server), b"others are fine\r\n");
}

/// Without `--telnet`, telnet's bytes are data like any other.
#[test]
fn without_the_flag_iac_sequences_come_back_byte_exact() {
    let server = TestServer::start();
    let mut stream = server.connect();
    let mut line = vec![IAC, IP, IAC, DO, TIMING_MARK, IAC, IAC, 0xFF, b'x'];
    line.extend_from_slice(&[IAC, SB, 24, IAC, SE, b'\n']);
    assert_echo(&mut stream, &line);
}
