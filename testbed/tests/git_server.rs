//! The Basic-auth git server and the sample repositories, over real git.

mod common;

use std::time::Duration;

use common::{PASSWORD, USER, demo, git_as, git_ok};
use sdp_agents::git::Git;
use sdp_testbed::{Demo, GitServer};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn wrong_password_is_refused_fast_and_the_right_one_works() {
    let (demo, _dir, _shutdown) = demo().await;
    let url = demo.git.repo_url("account");

    let before = demo.git.auth_failures();
    let wrong = git_as(&demo, &demo.root, "wrong password");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        wrong.command(["ls-remote", "--heads", &url]).output(),
    )
    .await
    .expect("a wrong password must fail, not wait for a prompt")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Authentication failed"), "{stderr}");
    assert!(demo.git.auth_failures() > before);

    // No credentials at all: refused without a prompt too.
    let anonymous = Git::new("git", &demo.root);
    let out = anonymous
        .command(["ls-remote", &url])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());

    let right = git_as(&demo, &demo.root, PASSWORD);
    let heads = git_ok(&right, &["ls-remote", "--heads", &url]).await;
    assert!(heads.contains("refs/heads/main"), "{heads}");
}

#[tokio::test]
async fn unauthenticated_http_gets_401_with_a_basic_challenge() {
    let (demo, _dir, _shutdown) = demo().await;
    let client = reqwest::Client::new();
    let url = format!(
        "{}/info/refs?service=git-upload-pack",
        demo.git.repo_url("user")
    );
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");

    let resp = client
        .get(&url)
        .basic_auth(USER, Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp = client
        .get(&url)
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-git-upload-pack-advertisement"
    );

    // A path outside the project root never reaches http-backend.
    let resp = client
        .get(format!("{}/../etc/passwd", demo.git.url()))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    assert!(demo.git.requests() >= 4);
}

#[tokio::test]
async fn working_clones_point_at_the_server_without_credentials() {
    let (demo, _dir, _shutdown) = demo().await;
    assert_eq!(
        demo.services.keys().collect::<Vec<_>>(),
        ["account", "payment", "user"]
    );
    let mut clones: Vec<_> = demo
        .services
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    clones.push(("erangel", demo.gateway.clone()));
    for (name, clone) in clones {
        assert!(clone.join(".git").is_dir(), "{}", clone.display());
        let git = Git::new("git", &clone);
        let origin = git_ok(&git, &["remote", "get-url", "origin"]).await;
        assert_eq!(origin, demo.git.repo_url(name));
        let config = std::fs::read_to_string(clone.join(".git/config")).unwrap();
        assert!(!config.contains(PASSWORD), "{config}");
        assert!(!config.contains(USER), "{config}");
    }
    assert!(demo.gateway.ends_with("vm/gateway/erangel"));
    assert!(demo.services["payment"].ends_with("vm/micro/payment"));
    let shown = format!("{demo:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[tokio::test]
async fn sample_repos_have_the_expected_branches() {
    let (demo, _dir, _shutdown) = demo().await;
    let git = git_as(&demo, &demo.root, PASSWORD);
    let expected: [(&str, &[&str]); 4] = [
        (
            "account",
            &["broken-build", "develop", "feature/login-error", "main"],
        ),
        ("payment", &["develop", "feature/login-error", "main"]),
        ("user", &["develop", "feature/login-error", "main"]),
        ("erangel", &["develop", "feature/gateway-x", "main"]),
    ];
    for (repo, branches) in expected {
        let heads = git_ok(&git, &["ls-remote", "--heads", &demo.git.repo_url(repo)]).await;
        let mut names: Vec<&str> = heads
            .lines()
            .filter_map(|l| l.split('\t').nth(1)?.strip_prefix("refs/heads/"))
            .collect();
        names.sort();
        assert_eq!(names, branches, "{repo}");
    }

    // Each branch commits its own name in the source.
    let clone = &demo.services["account"];
    let g = Git::new("git", clone);
    let branch_go = git_ok(&g, &["show", "origin/feature/login-error:branch.go"]).await;
    assert!(
        branch_go.contains(r#"const branch = "feature/login-error""#),
        "{branch_go}"
    );
    assert!(clone.join("go.mod").is_file());
    let go_mod = std::fs::read_to_string(clone.join("go.mod")).unwrap();
    assert!(
        go_mod.starts_with("module example.com/account\n\ngo 1.19"),
        "{go_mod}"
    );

    let config = std::fs::read_to_string(
        demo.gateway
            .join("application/config/production/config.php"),
    )
    .unwrap();
    for svc in ["account", "payment", "user"] {
        assert!(
            config.contains(&format!("http://ocp-{svc}.example.invalid")),
            "{svc}"
        );
    }
    assert!(config.contains("$config['_url'] = array("));
    let gw = Git::new("git", &demo.gateway);
    let x = git_ok(
        &gw,
        &[
            "show",
            "origin/feature/gateway-x:application/config/production/config.php",
        ],
    )
    .await;
    assert!(
        x.contains("ocp-payment-v2.example.invalid"),
        "per-branch OCP default"
    );
}

#[tokio::test]
async fn fetch_sees_a_pushed_commit_and_http_push_works() {
    let (demo, _dir, _shutdown) = demo().await;
    let clone = &demo.services["payment"];
    let git = git_as(&demo, clone, PASSWORD);

    let commit = demo
        .push_commit(
            "payment",
            "develop",
            "notes/new.txt",
            "a new commit arrived\n",
        )
        .await
        .unwrap();
    assert_eq!(commit.len(), 40);
    git_ok(&git, &["fetch", "--quiet", "origin"]).await;
    let remote = git_ok(&git, &["rev-parse", "origin/develop"]).await;
    assert_eq!(remote, commit);

    // A branch that did not exist is created.
    let fresh = demo
        .push_commit("payment", "feature/new", "x.txt", "x")
        .await
        .unwrap();
    git_ok(&git, &["fetch", "--quiet", "origin"]).await;
    assert_eq!(
        git_ok(&git, &["rev-parse", "origin/feature/new"]).await,
        fresh
    );

    // Push through the server (receive-pack over smart HTTP).
    git_ok(&git, &["checkout", "--quiet", "-b", "feature/pushed"]).await;
    std::fs::write(clone.join("pushed.txt"), "pushed over http\n").unwrap();
    git_ok(&git, &["add", "pushed.txt"]).await;
    git_ok(
        &git,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t.invalid",
            "commit",
            "--quiet",
            "-m",
            "push",
        ],
    )
    .await;
    git_ok(&git, &["push", "--quiet", "origin", "feature/pushed"]).await;
    let head = git_ok(&git, &["rev-parse", "HEAD"]).await;
    let bare = Git::new("git", demo.bare_repo("payment").unwrap());
    assert_eq!(
        git_ok(&bare, &["rev-parse", "refs/heads/feature/pushed"]).await,
        head
    );

    // Bad input changes nothing.
    for (repo, branch, file) in [
        ("nope", "main", "a"),
        ("payment", "--upload-pack=x", "a"),
        ("payment", "a..b", "a"),
        ("payment", "main", "../escape"),
        ("payment", "main", ".git/config"),
    ] {
        assert!(
            demo.push_commit(repo, branch, file, "x").await.is_err(),
            "{repo} {branch} {file}"
        );
    }
}

#[tokio::test]
async fn a_demo_directory_can_be_reused_by_a_new_server() {
    let dir = tempfile::tempdir().unwrap();
    let first_url = {
        let shutdown = CancellationToken::new();
        let demo = Demo::create(dir.path(), USER, PASSWORD, shutdown.clone())
            .await
            .unwrap();
        let url = demo.git.url();
        shutdown.cancel();
        url
    };
    let demo = Demo::create(dir.path(), USER, PASSWORD, CancellationToken::new())
        .await
        .unwrap();
    assert_ne!(demo.git.url(), first_url, "a new port");
    let origin = git_ok(
        &Git::new("git", &demo.services["user"]),
        &["remote", "get-url", "origin"],
    )
    .await;
    assert_eq!(origin, demo.git.repo_url("user"));
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bare")).unwrap();
    let server = GitServer::start(
        dir.path().join("bare"),
        USER,
        PASSWORD,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let addr = server.addr();
    assert_eq!(server.url(), format!("http://{addr}"));
    assert_eq!(server.repo_url("x"), format!("http://{addr}/x.git"));
    drop(server);
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "server still accepting after drop");
}

/// A clone wanting many refs sends a request body over 1 KiB, which git
/// gzips: the server must hand `Content-Encoding` to http-backend.
#[tokio::test]
async fn clone_with_many_refs_works_through_gzipped_requests() {
    let (demo, dir, _shutdown) = demo().await;
    let clone = &demo.services["user"];
    let git = git_as(&demo, clone, PASSWORD);
    for i in 0..40 {
        git_ok(
            &git,
            &["checkout", "--quiet", "-B", &format!("many/{i}"), "main"],
        )
        .await;
        git_ok(
            &git,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t.invalid",
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                &format!("many {i}"),
            ],
        )
        .await;
    }
    git_ok(
        &git,
        &[
            "push",
            "--quiet",
            "origin",
            "refs/heads/many/*:refs/heads/many/*",
        ],
    )
    .await;

    let target = dir.path().join("fresh");
    let parent = git_as(&demo, dir.path(), PASSWORD);
    git_ok(
        &parent,
        &[
            "clone",
            "--quiet",
            "--mirror",
            &demo.git.repo_url("user"),
            target.to_str().unwrap(),
        ],
    )
    .await;
    let count = git_ok(
        &Git::new("git", &target),
        &["for-each-ref", "--count=100", "refs/heads/many/"],
    )
    .await;
    assert_eq!(count.lines().count(), 40);
}
