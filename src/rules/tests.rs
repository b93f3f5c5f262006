use super::*;

const MINIMAL: &str = include_str!("../../tests/fixtures/unit/minimal.toml");

fn diags(text: &str) -> Vec<Diagnostic> {
    match RuleTable::from_str("rules.toml", text) {
        Ok(_) => panic!("expected the rules to be refused"),
        Err(e) => e.diagnostics,
    }
}

#[test]
fn minimal_table_loads_with_integer_prices() {
    let t = RuleTable::from_str("rules.toml", MINIMAL).expect("valid");
    assert_eq!(t.models.len(), 2);
    assert_eq!(t.models[0].input_nanos_per_mtok, 100_000_000);
    assert_eq!(t.models[1].batch_discount_bp, 5000);
    assert_eq!(t.classes, vec!["general".to_string(), "code".to_string()]);
    // `big` rates no `code` class: it falls back to its general tier.
    assert_eq!(t.models[1].tiers[1], 5);
    assert_eq!(t.models[0].tiers[1], 1);
    assert_eq!(t.workflow("w").map(|w| w.allowed.len()), Some(2));
    assert!(t.models[1].capabilities.contains(Capabilities::VISION));
    assert!(!t.models[0].capabilities.contains(Capabilities::TOOLS));
}

#[test]
fn unknown_key_is_located_by_line_column_and_key() {
    let text = MINIMAL.replace("max_output_tokens = 500", "max_output_tokens = 500\ncolour = \"red\"");
    let d = diags(&text);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].file, PathBuf::from("rules.toml"));
    assert_eq!((d[0].line, d[0].column), (10, 1));
    assert_eq!(d[0].key, "models[0].colour");
    assert!(d[0].message.contains("unknown field `colour`"), "{}", d[0].message);
    assert!(
        d[0].to_string().starts_with("rules.toml:10:1: `models[0].colour`"),
        "{}",
        d[0]
    );
}

#[test]
fn syntax_error_is_located() {
    let d = diags("[[models]\nname = 1");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 1);
}

#[test]
fn validation_reports_every_problem_with_its_key() {
    let text = MINIMAL
        .replace("input_per_mtok = 0.10", "input_per_mtok = -3")
        .replace("tiers = { general = 5 }", "tiers = { code = 5 }")
        .replace(
            "capabilities = [\"tools\", \"vision\"]",
            "capabilities = [\"telepathy\"]",
        )
        + "allowed_models = [\"ghost\"]\n\n[[rules]]\nname = \"r\"\nworkflow = \"nope\"\n";
    let d = diags(&text);
    let keys: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
    assert!(keys.contains(&"models[0].input_per_mtok"), "{keys:?}");
    assert!(keys.contains(&"models[1].tiers"), "{keys:?}");
    assert!(keys.contains(&"models[1].capabilities"), "{keys:?}");
    assert!(keys.contains(&"workflows[0].allowed_models"), "{keys:?}");
    assert!(keys.contains(&"rules[0].workflow"), "{keys:?}");
    assert!(
        keys.contains(&"rules[0].name"),
        "a rule with neither tier nor model: {keys:?}"
    );
    let price = d
        .iter()
        .find(|d| d.key == "models[0].input_per_mtok")
        .expect("price diagnostic");
    assert_eq!(price.line, 5);
}

#[test]
fn duplicates_and_bad_bands_are_refused() {
    let text = MINIMAL.to_string()
        + "\n[[workflows]]\nname = \"w\"\n\n[[rules]]\nname = \"r\"\nmin_complexity = 0.9\nmax_complexity = 0.2\ntier = 3\n\n[[rules]]\nname = \"r\"\ntier = 99\n";
    let d = diags(&text);
    let msgs: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("workflow `w` is defined twice")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("complexity band")), "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.contains("rule `r` is defined twice")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("tier 99")), "{msgs:#?}");
}

#[test]
fn pin_to_a_model_the_workflow_does_not_allow_is_refused() {
    let text = MINIMAL.to_string()
        + "allowed_models = [\"small\"]\n\n[[rules]]\nname = \"pin\"\nworkflow = \"w\"\nmodel = \"big\"\n";
    let d = diags(&text);
    assert!(
        d.iter()
            .any(|d| d.key == "rules[0].model" && d.message.contains("not allowed")),
        "{d:?}"
    );
}

#[test]
fn a_folder_loads_every_toml_directly_inside_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (models, rest) = MINIMAL.split_at(MINIMAL.find("[[workflows]]").expect("has workflows"));
    std::fs::write(dir.path().join("a-models.toml"), models).expect("write");
    std::fs::write(dir.path().join("b-workflows.toml"), rest).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not toml").expect("write");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/ignored.toml"), "this = is not valid toml [").expect("write");
    std::fs::write(dir.path().join(".hidden.toml"), "garbage [").expect("write");
    let t = RuleTable::load(dir.path()).expect("folder loads");
    assert_eq!(t.files.len(), 2);
    assert_eq!(t.models.len(), 2);
    assert_eq!(t.workflows.len(), 1);
}

#[test]
fn cross_file_duplicate_names_the_other_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.toml"), MINIMAL).expect("write");
    std::fs::write(
        dir.path().join("b.toml"),
        MINIMAL.replace("name = \"w\"", "name = \"w2\""),
    )
    .expect("write");
    let e = RuleTable::load(dir.path()).expect_err("duplicate models");
    let text = e.to_string();
    assert!(
        text.contains("b.toml:3:1: `models[0].name`: model `small` is defined twice (also in"),
        "{text}"
    );
    assert!(text.contains("a.toml"), "{text}");
}

#[test]
fn cost_is_integer_nanos_with_cache_and_batch() {
    let t = RuleTable::from_str("rules.toml", MINIMAL).expect("valid");
    let big = &t.models[1];
    // 1000 input at $2/M = 2000 nano... ×1000 = $0.002 = 2_000_000 nanos; 500 out at $8/M = 4_000_000.
    assert_eq!(big.cost(1000, 0, 500, false), 6_000_000);
    // 800 of the input cached at $0.5/M: 200×2000 + 800×500 + 4_000_000.
    assert_eq!(big.cost(1000, 800, 500, false), 400_000 + 400_000 + 4_000_000);
    // Batch: half price.
    assert_eq!(big.cost(1000, 0, 500, true), 3_000_000);
    // cached can never exceed input.
    assert_eq!(big.cost(10, 1000, 0, false), big.cost(10, 10, 0, false));
    // No cache-write price given: writes cost what input costs.
    assert_eq!(
        big.prices().cost_with_writes(1000, 0, 600, 500, false),
        big.cost(1000, 0, 500, false)
    );
}

#[test]
fn prices_journaled_before_the_cache_write_price_read_it_as_the_input_price() {
    // A Redis journal line written by the build before cache writes were priced.
    let old = r#"{"input_nanos_per_mtok":3000000000,"cached_input_nanos_per_mtok":300000000,"output_nanos_per_mtok":15000000000,"batch_discount_bp":5000}"#;
    let p: crate::rules::Prices = serde_json::from_str(old).expect("an old line still reads");
    assert_eq!(p.cache_write_input_nanos_per_mtok, 3_000_000_000);
    // And this build's lines round-trip as they are.
    let now = crate::rules::Prices {
        cache_write_input_nanos_per_mtok: 3_750_000_000,
        ..p
    };
    let back: crate::rules::Prices = serde_json::from_str(&serde_json::to_string(&now).expect("json")).expect("read");
    assert_eq!(back, now);
}

#[test]
fn cache_writes_are_charged_at_their_own_price_within_the_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    let t = RuleTable::load(&root).expect("default rules load");
    let sonnet = &t.models[t.model_index("claude-sonnet-4-5").expect("sonnet")];
    // Anthropic's 5-minute cache write: 1.25 times $3/M.
    assert_eq!(sonnet.cache_write_input_nanos_per_mtok, 3_750_000_000);
    let p = sonnet.prices();
    // 10k input: 4k read from cache ($0.30/M), 2k written ($3.75/M), 4k plain ($3/M).
    assert_eq!(
        p.cost_with_writes(10_000, 4_000, 2_000, 0, false),
        4_000 * 300 + 2_000 * 3_750 + 4_000 * 3_000
    );
    // Reads and writes together never count for more than the input.
    assert_eq!(
        p.cost_with_writes(1_000, 800, 900, 0, false),
        p.cost_with_writes(1_000, 800, 200, 0, false)
    );
    let bad = MINIMAL.replacen(
        "cached_input_per_mtok",
        "cache_write_input_per_mtok = -1.0\ncached_input_per_mtok",
        1,
    );
    let e = RuleTable::from_str("rules.toml", &bad)
        .expect_err("a negative price")
        .to_string();
    assert!(
        e.contains("rules.toml:") && e.contains("cache_write_input_per_mtok"),
        "{e}"
    );
}

#[test]
fn shipped_rules_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    let t = RuleTable::load(&root).expect("default rules load");
    let providers: std::collections::BTreeSet<&str> = t.models.iter().map(|m| m.provider.as_str()).collect();
    assert!(t.models.len() >= 10, "at least 10 models");
    assert!(providers.len() >= 3, "at least 3 providers");
    assert!(t.workflow("general").is_some());
    let r = RuleTable::load(&root.join("examples/routellm.toml")).expect("routellm example loads");
    let gpt4 = &r.models[r.model_index("gpt-4-1106-preview").expect("gpt-4")];
    assert_eq!(
        (gpt4.input_nanos_per_mtok, gpt4.output_nanos_per_mtok),
        (10_000_000_000, 30_000_000_000)
    );
    let mix = &r.models[r.model_index("mixtral-8x7b-instruct-v0.1").expect("mixtral")];
    assert_eq!(
        (mix.input_nanos_per_mtok, mix.output_nanos_per_mtok),
        (600_000_000, 600_000_000)
    );
    assert!(r.workflow("replay").is_some());
}

#[test]
fn workflow_names_keep_to_a_store_safe_alphabet() {
    let d = diags(&MINIMAL.replace("name = \"w\"", "name = \"team{a}\""));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].key, "workflows[0].name");
    assert!(d[0].message.contains("only letters, digits"), "{}", d[0].message);
    assert!(valid_workflow_name("budget-demo.v2_x"));
    assert!(!valid_workflow_name("a|b"));
    assert!(!valid_workflow_name(&"a".repeat(65)));
}

#[test]
fn a_lease_outside_its_ranges_is_refused_at_its_line_and_a_good_one_loads() {
    let budget =
        |lease: &str| format!("{MINIMAL}[workflows.budget]\nlimit_usd = 10\nperiod = \"day\"\nlease = {lease}\n");
    let d = diags(&budget("{ refresh_s = 0.2, max_share = 0.9 }"));
    let lease: Vec<&Diagnostic> = d.iter().filter(|d| d.key == "workflows[0].budget.lease").collect();
    assert_eq!(lease.len(), 2, "{d:?}");
    assert!(lease[0].message.contains("between 1 and 300"), "{}", lease[0].message);
    assert!(lease[1].message.contains("at most 0.5"), "{}", lease[1].message);
    assert_eq!(lease[0].line, 29, "the line of `lease`");
    assert!(
        RuleTable::from_str("r.toml", &budget("{ refresh_s = 10 }")).is_err(),
        "max_share is required"
    );
    let t = RuleTable::from_str("r.toml", &budget("{ refresh_s = 10, max_share = 0.05 }")).expect("valid");
    let terms = t.workflow("w").and_then(|w| w.budget.as_ref()).and_then(|b| b.lease);
    assert_eq!(
        terms,
        Some(LeaseTerms {
            refresh_ms: 10_000,
            max_share_bp: 500
        })
    );
}
