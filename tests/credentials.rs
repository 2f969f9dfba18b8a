//! `otabridge credentials` and the library against independently computed
//! vectors (fixtures/credentials.toml says how they were computed).

use otabridge_codecs::iotda::{Credentials, EventTime, SignatureType};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    device_id: String,
    secret: String,
    timestamp: String,
    verify_timestamp: bool,
    client_id: String,
    username: String,
    password: String,
}

fn vectors() -> Vec<Case> {
    let text = std::fs::read_to_string("fixtures/credentials.toml").unwrap();
    toml::from_str::<Vectors>(&text).unwrap().case
}

fn at_hour(ts: &str) -> EventTime {
    EventTime::parse(&format!("{}T{}1234Z", &ts[..8], &ts[8..])).unwrap()
}

#[test]
fn library_matches_the_vectors() {
    for c in vectors() {
        let sig = if c.verify_timestamp {
            SignatureType::TimestampCheck
        } else {
            SignatureType::NoTimestampCheck
        };
        let got = Credentials::with_secret(&c.device_id, &c.secret, sig, at_hour(&c.timestamp));
        assert_eq!(got.client_id, c.client_id);
        assert_eq!(got.username, c.username);
        assert_eq!(got.password.as_deref(), Some(c.password.as_str()));
    }
}

#[test]
fn command_line_matches_the_vectors() {
    for c in vectors() {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_otabridge"));
        cmd.args([
            "credentials",
            "--device-id",
            &c.device_id,
            "--secret",
            &c.secret,
        ]);
        cmd.args(["--timestamp", &c.timestamp]);
        if c.verify_timestamp {
            cmd.arg("--verify-timestamp");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text,
            format!(
                "client_id: {}\nusername:  {}\npassword:  {}\n",
                c.client_id, c.username, c.password
            )
        );
    }
}

#[test]
fn a_bad_timestamp_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args([
            "credentials",
            "--device-id",
            "d",
            "--secret",
            "s",
            "--timestamp",
            "2024133103",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timestamp"));
}
