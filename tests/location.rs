//! Near first (issue 35), end to end on loopback: customers and volunteers at addresses in
//! 127.0.0.0/8 that the server's `[location]` places in two sites and, by a `.mmdb` the test
//! writes, in ASes and countries. Customers bind their source address, so the server sees
//! them where they are; a trusted proxy's `X-Forwarded-For` is taken, an untrusted one's is
//! not; a private volunteer takes only its own network's customers; `?mirrorlist` says why.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use locate::mmdb_writer::{Record, Writer};

/// A client whose requests come from `from`, following no redirect.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The body a customer at `from` gets for `url`.
async fn text_from(from: &str, url: &str) -> String {
    let r = client_from(from).get(url).send().await.unwrap();
    r.text().await.unwrap()
}

/// Where the server sends a customer at `from` for `path` (None: the origin serves it),
/// with `headers`.
async fn sent_to(
    server: &Server,
    from: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let mut req = client_from(from).head(format!("{}/debian/{path}", server.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    match r.status() {
        reqwest::StatusCode::FOUND => {
            let loc = r.headers()["location"].to_str().unwrap();
            Some(loc.split('/').nth(2).unwrap().to_string())
        }
        s => {
            assert_eq!(s, reqwest::StatusCode::OK, "{path} from {from}");
            None
        }
    }
}

/// The mirror list for `path` as JSON, asked from `from` with `query` added.
async fn mirrorlist(
    server: &Server,
    from: &str,
    path: &str,
    query: &str,
    token: Option<&str>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut req = client_from(from)
        .get(format!("{}/debian/{path}?mirrorlist{query}", server.url))
        .header("accept", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or_default())
}

fn write_mmdb(path: &Path, nl_as: u32, de_as: u32) {
    let mut w = Writer::new("GeoLite2-Test");
    let rec = |asn: u32, country: &str| Record {
        asn: Some(asn),
        as_org: Some(format!("AS{asn}")),
        country: Some(country.into()),
        continent: Some("EU".into()),
    };
    w.insert("127.3.0.0/16".parse().unwrap(), rec(nl_as, "NL"));
    w.insert("127.4.0.0/16".parse().unwrap(), rec(de_as, "DE"));
    w.write(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_go_near_first_and_private_volunteers_serve_only_their_own() {
    let dir = TestDir::new();
    let root = dir.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let mmdb = root.join("geo.mmdb");
    write_mmdb(&mmdb, 64500, 64501);
    let config = root.join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[location]
trusted_proxies = ["127.9.0.0/16"]
mmdb = ["{}"]

[[location.sites]]
name = "a"
region = "west"
netblocks = ["127.1.0.0/16"]

[[location.sites]]
name = "b"
netblocks = ["127.2.0.0/16"]
"#,
            mmdb.display()
        ),
    )
    .unwrap();
    let mut server = start_server(root, &repo, &["--config", config.to_str().unwrap()]).await;
    server.publish();
    let mut vols = vec![
        volunteer_listening(
            root,
            &server,
            "va",
            &repo,
            "127.1.0.10:PORT",
            &["--max-connections", "1"],
        ),
        volunteer_listening(root, &server, "vb", &repo, "127.2.0.10:PORT", &[]),
        volunteer_listening(root, &server, "vnl", &repo, "127.3.0.10:PORT", &[]),
        volunteer_listening(
            root,
            &server,
            "campus",
            &repo,
            "127.5.0.10:PORT",
            &["--netblock", "127.5.0.0/16", "--private"],
        ),
    ];
    let result = async {
        for v in &vols {
            server.wait_held(&v.name, 1).await;
        }
        let host = |name: &str| {
            let v = vols.iter().find(|v| v.name == name).unwrap();
            v.url.trim_start_matches("http://").to_string()
        };
        let file = "big/a.bin";
        // Each site's customers go to their own site's volunteer; a customer nobody placed
        // by site goes by its AS (from the database), one in another AS of the same
        // continent by region; the campus's own customers to the campus.
        for (from, to) in [
            ("127.1.0.5", "va"),
            ("127.2.0.5", "vb"),
            ("127.3.0.5", "vnl"),
            ("127.4.0.5", "vnl"),
            ("127.5.0.7", "campus"),
        ] {
            let got = sent_to(&server, from, file, &[]).await;
            assert_eq!(
                got.as_deref(),
                Some(host(to).as_str()),
                "customer at {from}"
            );
        }
        // Nobody outside the campus's netblock is ever sent there.
        for k in 0..40 {
            let from = format!("127.{}.0.{}", [1, 2, 3, 4, 6][k % 5], 20 + k);
            let got = sent_to(&server, &from, file, &[]).await;
            assert_ne!(got.as_deref(), Some(host("campus").as_str()), "{from}");
        }
        // A trusted proxy speaks for its customer; an untrusted peer's header is ignored.
        // (`va` takes one customer at a time: its next report frees it.)
        let freed = Duration::from_millis(1500);
        tokio::time::sleep(freed).await;
        let forwarded = [("x-forwarded-for", "203.0.113.9, 127.2.0.7")];
        let got = sent_to(&server, "127.9.0.1", file, &forwarded).await;
        assert_eq!(
            got.as_deref(),
            Some(host("vb").as_str()),
            "via the trusted proxy"
        );
        let got = sent_to(&server, "127.1.0.5", file, &forwarded).await;
        assert_eq!(got.as_deref(), Some(host("va").as_str()), "forged header");
        tokio::time::sleep(freed).await;
        let rfc = [("forwarded", "for=127.3.0.8;proto=http")];
        let got = sent_to(&server, "127.9.0.1", file, &rfc).await;
        assert_eq!(got.as_deref(), Some(host("vnl").as_str()), "Forwarded");
        // A trusted proxy that ended TLS says so: its customer is sent to no http://
        // volunteer (none here serves HTTPS: the origin answers). An untrusted peer saying
        // the same is not believed.
        for proto in [
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=127.3.0.8;proto=https"),
        ] {
            let got = sent_to(&server, "127.9.0.1", file, &[proto]).await;
            assert_eq!(got, None, "{proto:?} via the trusted proxy");
        }
        let got = sent_to(
            &server,
            "127.2.0.5",
            file,
            &[("x-forwarded-proto", "https")],
        )
        .await;
        assert!(got.is_some(), "an untrusted peer's X-Forwarded-Proto");

        // Near full: `va` takes one customer at a time, so the next one of its site goes
        // far. (Its report can land between the two and free it again: a few tries.)
        let mut spilled = false;
        for _ in 0..5 {
            let first = sent_to(&server, "127.1.0.5", file, &[]).await;
            let second = sent_to(&server, "127.1.0.6", file, &[]).await;
            assert_eq!(first.as_deref(), Some(host("va").as_str()));
            if second.is_some() && second.as_deref() != Some(host("va").as_str()) {
                spilled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        assert!(
            spilled,
            "a second customer of a full site never went elsewhere"
        );

        // The mirror list, as the customer at 127.2.0.5 sees it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (status, list) = mirrorlist(&server, "127.2.0.5", file, "", None).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["customer"]["site"], "b", "{list}");
        assert_eq!(list["customer"]["from"], "connection");
        let row = |id: &str| {
            list["volunteers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == id)
                .cloned()
                .unwrap_or_else(|| panic!("{id} missing from {list}"))
        };
        assert_eq!(row("vb")["verdict"], "chosen", "{list}");
        assert_eq!(row("vb")["tier"], "site");
        assert_eq!(row("va")["tier"], "world");
        assert!(
            row("va")["verdict"]
                .as_str()
                .unwrap()
                .starts_with("alternative"),
            "{list}"
        );
        assert!(
            row("va")["reason"]
                .as_str()
                .unwrap()
                .contains("a nearer tier comes first"),
            "{list}"
        );
        assert_eq!(row("campus")["verdict"], "excluded");
        assert!(
            row("campus")["reason"]
                .as_str()
                .unwrap()
                .contains("only its own networks"),
            "{list}"
        );
        // A Metalink lists the sources in the same order: its own site's first.
        let meta4 = text_from("127.2.0.5", &format!("{}/debian/{file}.meta4", server.url)).await;
        let first = meta4.split("<url").nth(1).unwrap_or_default();
        assert!(first.contains(&host("vb")), "{meta4}");
        assert!(!meta4.contains(&host("campus")), "{meta4}");
        // The page a browser gets says the same.
        let page = text_from(
            "127.2.0.5",
            &format!("{}/debian/{file}?mirrorlist", server.url),
        )
        .await;
        assert!(
            page.contains("<table>") && page.contains("serves only its own networks"),
            "{page}"
        );
        // Asking for another address needs the admin's token.
        let (status, _) = mirrorlist(&server, "127.2.0.5", file, "&ip=127.4.0.9", None).await;
        assert_eq!(status, 401);
        let token = std::fs::read_to_string(server.data_dir.join("admin.token")).unwrap();
        let token = token.trim();
        let (status, list) =
            mirrorlist(&server, "127.2.0.5", file, "&ip=127.4.0.9", Some(token)).await;
        assert_eq!(status, 200);
        assert_eq!(list["customer"]["from"], "ip parameter");
        assert_eq!(list["customer"]["asn"], 64501, "{list}");
        assert_eq!(list["customer"]["country"], "DE");
        assert_eq!(list["customer"]["region"], "EU");
        let (status, _) = mirrorlist(&server, "127.2.0.5", file, "&ip=nowhere", Some(token)).await;
        assert_eq!(status, 400);

        // The database is read again when it changes: 127.4/16 moves into the NL AS.
        write_mmdb(&mmdb, 64500, 64500);
        wait_until(
            Duration::from_secs(20),
            "the changed database to be read",
            || async {
                let (_, list) =
                    mirrorlist(&server, "127.2.0.5", file, "&ip=127.4.0.9", Some(token)).await;
                list["customer"]["asn"] == 64500
            },
        )
        .await;
        // A broken one is refused and the last good one kept.
        std::fs::write(&mmdb, b"not a database").unwrap();
        tokio::time::sleep(Duration::from_secs(7)).await;
        let (_, list) = mirrorlist(&server, "127.2.0.5", file, "&ip=127.4.0.9", Some(token)).await;
        assert_eq!(list["customer"]["asn"], 64500, "{list}");
        assert!(
            server
                .proc
                .log_text()
                .contains("does not read; kept the previous one"),
            "the log says why"
        );
    };
    let outcome = tokio::time::timeout(Duration::from_secs(180), result).await;
    let logs = dump_logs(
        &vols
            .iter()
            .map(|v| &v.proc)
            .chain([&server.proc])
            .collect::<Vec<_>>(),
    );
    for v in &mut vols {
        v.proc.terminate();
    }
    server.proc.terminate();
    outcome.unwrap_or_else(|_| panic!("timed out\n{logs}"));
}
