//! `otabridge jobs`: the control API's client on the command line
//! (src/control, docs/operations.md "Controlling jobs").

use std::process::ExitCode;

use http::Method;
use serde_json::Value;

use crate::cli::{JobTarget, JobsArgs, JobsCommand};

/// Runs one `otabridge jobs` command: exit 0 when the daemon did it, 1
/// when it refused (the reason on stderr) or cannot be reached, 2 for bad
/// usage.
pub(crate) fn jobs(args: JobsArgs) -> ExitCode {
    let socket = match (&args.socket, &args.config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => match crate::load(c) {
            Ok(cfg) => cfg.control_socket(),
            Err(code) => return code,
        },
        (None, None) => {
            eprintln!("otabridge jobs: give --config FILE (or --socket PATH)");
            return ExitCode::from(2);
        }
    };
    let (method, path) = match &args.what {
        JobsCommand::List => (Method::GET, "/jobs".to_owned()),
        JobsCommand::Show(t) => (Method::GET, resource(t)),
        JobsCommand::Cancel(t) => (Method::POST, format!("{}/cancel", resource(t))),
        JobsCommand::Pause(t) => (Method::POST, format!("{}/pause", resource(t))),
        JobsCommand::Resume(t) => (Method::POST, format!("{}/resume", resource(t))),
        JobsCommand::Retry(t) => (Method::POST, format!("{}/retry", resource(t))),
        JobsCommand::Release(t) => (Method::POST, format!("/tasks/{}/release", escape(&t.task))),
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (status, body) =
        match rt.block_on(otabridge::control::client::request(&socket, method, &path)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("otabridge jobs: {e}");
                return ExitCode::from(1);
            }
        };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    if !status.is_success() {
        let why = body["error"].as_str().unwrap_or("no reason given");
        eprintln!("otabridge jobs: {} {why}", status.as_u16());
        return ExitCode::from(1);
    }
    if !args.json {
        match &args.what {
            JobsCommand::List | JobsCommand::Release(_) => print_list(&body["jobs"]),
            _ => print_job(&body),
        }
    }
    ExitCode::SUCCESS
}

/// `/jobs/ID` for a number, `/children/DEVICE_ID` otherwise.
fn resource(t: &JobTarget) -> String {
    if !t.target.is_empty() && t.target.bytes().all(|b| b.is_ascii_digit()) {
        return format!("/jobs/{}", t.target);
    }
    format!("/children/{}", escape(&t.target))
}

/// A path segment: unreserved characters as they are, the rest `%XX`.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_list(jobs: &Value) {
    println!(
        "{:>5} {:<28} {:<16} {:<12} {:<12} {:<10} {:>4} {:>21}  result",
        "job", "child", "task", "target", "phase", "state", "%", "offset/size"
    );
    for j in jobs.as_array().into_iter().flatten() {
        let result = match (&j["result_code"], &j["held"]) {
            (Value::Null, Value::String(why)) => format!("held: {why}"),
            (Value::Null, _) => String::new(),
            (c, _) => format!("{} {}", text(c), text(&j["description"])),
        };
        println!(
            "{:>5} {:<28} {:<16} {:<12} {:<12} {:<10} {:>4} {:>21}  {}",
            text(&j["id"]),
            text(&j["device_id"]),
            text(&j["task_id"]),
            text(&j["target"]),
            text(&j["phase"]),
            text(&j["state"]),
            text(&j["progress"]),
            format!("{}/{}", text(&j["offset"]), text(&j["size"])),
            result
        );
    }
}

fn print_job(j: &Value) {
    for key in [
        "id",
        "device_id",
        "task_id",
        "target",
        "phase",
        "state",
        "held",
        "progress",
        "offset",
        "size",
        "retries",
        "result_code",
        "description",
        "received_unix",
        "deadline_unix",
        "retry_of",
    ] {
        println!("{key:<14} {}", text(&j[key]));
    }
    if let Some(c) = j.get("cause").filter(|c| !c.is_null()) {
        println!("{:<14} {}", "cause", c);
    }
}
