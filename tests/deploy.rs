//! The packaging files, checked as far as this machine can (no Docker engine runs here): the
//! compose file parses and every file it mounts or builds exists, its mailsync configuration
//! is valid with the environment compose gives it, the Dockerfile's stages and hardening are
//! there, and the systemd unit is hardened, speaks sd_notify, and passes `systemd-analyze
//! verify` where that tool exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A YAML file as JSON, through Python's yaml module (PyYAML, installed by .ci/run).
fn yaml(path: &str) -> Option<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(root().join(path))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            mailsync_testkit::require::missing("python3 with PyYAML (pip install PyYAML)");
            None
        }
        Ok(o) => panic!(
            "{path} is not valid YAML: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            mailsync_testkit::require::missing(&format!("python3 ({e})"));
            None
        }
    }
}

/// The Dockerfile's `ENV` settings of the final stage.
fn dockerfile_env(dockerfile: &str) -> HashMap<String, String> {
    let last = dockerfile.rsplit("\nFROM ").next().unwrap();
    let mut env = HashMap::new();
    let joined = last.replace("\\\n", " ");
    for line in joined.lines().filter_map(|l| l.trim().strip_prefix("ENV ")) {
        for pair in line.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    env
}

#[test]
fn the_dockerfile_builds_a_lean_non_root_image_with_a_healthcheck() {
    let d = read("Dockerfile");
    let stages: Vec<&str> = d.lines().filter_map(|l| l.strip_prefix("FROM ")).collect();
    assert_eq!(stages.len(), 3, "build, ews-sim, mailsync: {stages:?}");
    assert!(stages[0].ends_with(" AS build"));
    assert!(
        stages[2].starts_with("debian:bookworm-slim AS mailsync"),
        "slim runtime last"
    );
    assert!(d.contains("cargo build --release --locked -p mailsync --no-default-features"));
    let last = d.rsplit("\nFROM ").next().unwrap();
    assert!(last.contains("\nUSER 10001:10001\n"), "non-root");
    assert!(
        !last.contains("ews-sim"),
        "no simulator in the service image"
    );
    assert!(last.contains("CMD [\"/usr/local/bin/mailsync\", \"healthcheck\"]"));
    assert!(last.contains("HEALTHCHECK "));
    // The health check is a real subcommand of the binary.
    let help = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(["healthcheck", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let env = dockerfile_env(&d);
    assert_eq!(env["MAILSYNC_ADMIN_LISTEN"], "0.0.0.0:9898");
    for ignored in ["target/", ".git/"] {
        assert!(
            read(".dockerignore").lines().any(|l| l == ignored),
            "{ignored}"
        );
    }
}

#[test]
fn the_compose_file_references_what_exists_and_configures_a_valid_service() {
    let Some(compose) = yaml("compose.yaml") else {
        return;
    };
    let services = compose["services"].as_object().unwrap();
    for name in ["postgres", "ews-sim", "mailsync", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "no {name} service");
    }
    let dockerfile = read("Dockerfile");
    for (name, s) in services {
        if let Some(target) = s["build"]["target"].as_str() {
            assert!(
                dockerfile.contains(&format!(" AS {target}\n")),
                "{name} builds target {target}, which the Dockerfile lacks"
            );
        }
        for volume in s["volumes"].as_array().into_iter().flatten() {
            let v = volume.as_str().unwrap();
            let source = v.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    root().join(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        for dep in s["depends_on"]
            .as_object()
            .into_iter()
            .flat_map(|d| d.keys())
        {
            assert!(
                services.contains_key(dep),
                "{name} depends on unknown {dep}"
            );
        }
    }
    // Grafana gets the dashboard and its provisioning; Prometheus the rules.
    let mounts = |s: &str| -> Vec<String> {
        services[s]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(mounts("grafana")
        .iter()
        .any(|m| m.starts_with("./grafana/dashboards:/var/lib/grafana/dashboards/mailsync")));
    assert!(mounts("grafana")
        .iter()
        .any(|m| m.starts_with("./grafana/provisioning:/etc/grafana/provisioning")));
    assert!(mounts("prometheus")
        .iter()
        .any(|m| m.starts_with("./alerts/mailsync.rules.yml:/etc/prometheus/mailsync.rules.yml")));

    // The Prometheus configuration loads those rules and scrapes job "mailsync".
    let Some(prom) = yaml("deploy/compose/prometheus.yml") else {
        return;
    };
    assert_eq!(prom["rule_files"][0], "/etc/prometheus/mailsync.rules.yml");
    assert_eq!(prom["scrape_configs"][0]["job_name"], "mailsync");
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "mailsync:9898"
    );

    // mailsync's configuration is valid with the environment compose and the image give it.
    let mut env: HashMap<String, String> = dockerfile_env(&dockerfile);
    for (k, v) in services["mailsync"]["environment"].as_object().unwrap() {
        env.insert(k.clone(), v.as_str().unwrap().to_owned());
    }
    let cfg = mailsync::config::parse(&read("deploy/compose/mailsync.toml"), &env)
        .unwrap_or_else(|e| panic!("deploy/compose/mailsync.toml: {e:?}"));
    assert_eq!(cfg.admin.listen.to_string(), "0.0.0.0:9898");
    assert!(cfg.admin.token.is_some());
    // Every configured operator is seeded.
    let seed = read("deploy/compose/seed.sql");
    for m in &cfg.mailboxes {
        assert!(
            seed.contains(&format!("'{}'", m.operator)),
            "operator {} of {} is not seeded",
            m.operator,
            m.smtp
        );
    }
    assert!(services["ews-sim"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "0.0.0.0:8765"));
}

fn unit() -> HashMap<String, Vec<String>> {
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for line in read("deploy/systemd/mailsync.service").lines() {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    keys
}

#[test]
fn the_systemd_unit_is_hardened_and_speaks_sd_notify() {
    let u = unit();
    let one = |k: &str| u.get(k).and_then(|v| v.last()).map(String::as_str);
    assert_eq!(one("Type"), Some("notify"));
    assert_eq!(one("NotifyAccess"), Some("main"));
    assert!(one("WatchdogSec").is_some_and(|w| w.parse::<u32>().unwrap() >= 10));
    assert_eq!(one("DynamicUser"), Some("yes"));
    assert_eq!(one("ProtectSystem"), Some("strict"));
    assert_eq!(one("StateDirectory"), Some("mailsync"));
    assert_eq!(one("NoNewPrivileges"), Some("yes"));
    assert_eq!(one("CapabilityBoundingSet"), Some(""));
    assert_eq!(one("ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    assert_eq!(
        one("ExecStart"),
        Some("/usr/local/bin/mailsync run --config /etc/mailsync/mailsync.toml")
    );
    // The stop timeout covers the service's own graceful stop of running steps.
    assert!(one("TimeoutStopSec").unwrap().parse::<u32>().unwrap() >= 30);

    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze verify (systemd-analyze is not installed); the keys above are checked");
        return;
    };
    assert!(found.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailsync.service");
    let text = read("deploy/systemd/mailsync.service")
        .replace("/usr/local/bin/mailsync", env!("CARGO_BIN_EXE_mailsync"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("mailsync.service"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// The lines of the documented installation (docs/deploy.md's shell block and the unit's
/// header comment) that create the configuration directory or put the configuration there.
fn config_install_steps() -> Vec<String> {
    let doc = read("docs/deploy.md");
    let unit = read("deploy/systemd/mailsync.service");
    let unit_lines = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .flat_map(|l| l.split("&&"));
    let doc_block = doc
        .split("## systemd")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/deploy.md has a shell block under ## systemd");
    doc_block
        .lines()
        .chain(unit_lines)
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| {
            l.contains("/etc/mailsync")
                && (l.starts_with("install ") || l.starts_with("cp "))
                && !l.contains("mailsync.env")
        })
        .collect()
}

/// With `DynamicUser=yes` the service's user owns nothing in /etc: it reads the configuration
/// as "others". The unit's `ConfigurationDirectoryMode` and every documented installation
/// step must leave the directory and the file readable by others, and nothing in the
/// sandbox may hide /etc. As root, the documented steps are carried out (under umask 077,
/// the strictest an administrator may have) and the file is read as user nobody.
#[test]
fn the_hardened_unit_can_read_its_configuration() {
    let u = unit();
    let one = |k: &str| u.get(k).and_then(|v| v.last()).map(String::as_str);
    assert_eq!(one("DynamicUser"), Some("yes"));
    let start = one("ExecStart").unwrap();
    let config = start
        .split("--config ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let dir = format!("/etc/{}", one("ConfigurationDirectory").unwrap());
    assert!(
        config.starts_with(&format!("{dir}/")),
        "{config} is outside {dir}"
    );
    let mode = u32::from_str_radix(one("ConfigurationDirectoryMode").unwrap(), 8).unwrap();
    assert_eq!(
        mode & 0o005,
        0o005,
        "{dir} mode {mode:o}: others cannot enter it"
    );
    // ProtectSystem=strict keeps /etc readable; nothing may make it inaccessible.
    for key in ["InaccessiblePaths", "TemporaryFileSystem", "ProtectSystem"] {
        for v in u.get(key).into_iter().flatten() {
            assert!(
                !v.split_whitespace()
                    .any(|p| p.trim_start_matches(['-', '+']) == "/etc"
                        || dir.starts_with(p.trim_start_matches(['-', '+']))),
                "{key}={v} hides {dir}"
            );
        }
    }

    let steps = config_install_steps();
    assert!(
        steps.iter().any(|l| l.starts_with("install -d"))
            && steps.iter().any(|l| l.contains(".toml")),
        "documented steps: {steps:?}"
    );
    for step in &steps {
        assert!(
            !step.starts_with("cp "),
            "{step}: cp keeps root's umask; use install -m"
        );
    }

    // Carry the steps out in a scratch root and read the file as nobody.
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
        || Command::new("setpriv").arg("--version").output().is_err()
    {
        mailsync_testkit::require::missing(
            "root and setpriv (to carry out the documented installation and read as nobody)",
        );
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let etc = scratch.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(&etc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = steps
        .iter()
        .map(|l| l.replace("/etc/", &format!("{}/", etc.display())))
        .collect::<Vec<_>>()
        .join("\n");
    let out = Command::new("sh")
        .arg("-ec")
        .arg(format!("umask 077\n{script}"))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = config.replace("/etc/", &format!("{}/", etc.display()));
    let read_as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&installed)
        .output()
        .unwrap();
    assert!(
        read_as_nobody.status.success() && !read_as_nobody.stdout.is_empty(),
        "the service user cannot read {installed} after the documented steps: {}",
        String::from_utf8_lossy(&read_as_nobody.stderr)
    );
}

#[test]
fn deploy_doc_covers_every_way_to_run() {
    let doc = read("docs/deploy.md");
    for needle in [
        "docker build",
        "docker compose up",
        "deploy/systemd/mailsync.service",
        "Type=notify",
        "Windows service",
        "--no-default-features",
    ] {
        assert!(
            doc.contains(needle),
            "docs/deploy.md does not mention {needle}"
        );
    }
    assert!(Path::new(&root().join("alerts/README.md")).exists());
}
