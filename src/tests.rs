// In-process tests (`#[pg_test]`): run inside a PostgreSQL backend as the superuser that owns
// the test cluster. Isolation itself is tested from a NOSUPERUSER client in tests/integration.

use pgrx::prelude::*;

#[pg_test]
fn slug_validation() {
    assert!(crate::lifecycle::valid_slug("acme"));
    assert!(crate::lifecycle::valid_slug("a1-b_c"));
    assert!(!crate::lifecycle::valid_slug("A"));
    assert!(!crate::lifecycle::valid_slug("1abc"));
    assert!(!crate::lifecycle::valid_slug("x"));
    assert!(!crate::lifecycle::valid_slug("bad slug"));
}

#[pg_test]
fn create_tenant_seeds_roles() {
    Spi::run("SELECT tenancy.create_tenant('acme', 'Acme')").unwrap();
    let roles = Spi::get_one::<Vec<String>>(
        "SELECT array_agg(role ORDER BY role) FROM tenancy.tenant_role r JOIN tenancy.tenant t ON t.id = r.tenant_id WHERE t.slug = 'acme'",
    )
    .unwrap()
    .unwrap();
    assert_eq!(roles, vec!["admin", "member", "viewer"]);
}

#[pg_test(error = "no tenant bound")]
fn unbound_current_tenant_raises() {
    Spi::get_one::<pgrx::Uuid>("SELECT tenancy.current_tenant()").unwrap();
}

#[pg_test(error = "tenant \"acme\" already exists")]
fn duplicate_slug_refused() {
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
}

#[pg_test(error = "invalid tenant slug \"Bad Slug\"")]
fn bad_slug_refused() {
    Spi::run("SELECT tenancy.create_tenant('Bad Slug')").unwrap();
}

#[pg_test(error = "invalid HS256 key for kid \"k\": HMAC secrets must be at least 32 bytes long")]
fn short_hmac_key_refused() {
    Spi::run("SELECT tenancy.add_key('k', 'HS256', 'short')").unwrap();
}

#[pg_test]
fn role_mapping_binds_without_token() {
    Spi::run("CREATE ROLE mapped_app LOGIN").unwrap();
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    // The mapping is keyed by the session (login) role; map the test's own session user.
    Spi::run("SELECT tenancy.map_role(session_user::regrole, 'acme', '{viewer}')").unwrap();
    Spi::run("SET LOCAL client_min_messages = error").unwrap();
    let slug = Spi::get_one::<String>(
        "SELECT slug FROM tenancy.tenants WHERE id = tenancy.current_tenant()",
    )
    .unwrap()
    .unwrap();
    assert_eq!(slug, "acme");
    let roles = Spi::get_one::<Vec<String>>("SELECT tenancy.current_roles()").unwrap().unwrap();
    assert_eq!(roles, vec!["viewer"]);
}

#[pg_test]
fn settings_roundtrip_and_resource_limits_validated() {
    Spi::run("SELECT tenancy.create_tenant('acme', settings => '{\"model\": \"small\"}')").unwrap();
    Spi::run("SELECT tenancy.set_setting('acme', 'statement_timeout', '\"2s\"')").unwrap();
    let s = Spi::get_one::<pgrx::JsonB>("SELECT settings FROM tenancy.tenants WHERE slug = 'acme'")
        .unwrap()
        .unwrap();
    assert_eq!(s.0["model"], "small");
    assert_eq!(s.0["statement_timeout"], "2s");
}

#[pg_test(error = "invalid value for tenant setting \"work_mem\": \"lots\"")]
fn bad_resource_setting_refused() {
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run("SELECT tenancy.set_setting('acme', 'work_mem', '\"lots\"')").unwrap();
}

#[pg_test]
fn management_actions_are_audited() {
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run("SELECT tenancy.suspend_tenant('acme', 'billing')").unwrap();
    let n = Spi::get_one::<i64>(
        "SELECT count(*) FROM tenancy.audit_log WHERE op = 'ADMIN' AND new_row->>'action' IN ('create_tenant', 'suspend_tenant')",
    )
    .unwrap()
    .unwrap();
    assert_eq!(n, 2);
}

#[pg_test]
fn security_events_survive_the_rollback_of_their_statement() {
    // pg_test preloads the library, so events are also kept in shared memory.
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    let before = Spi::get_one::<i64>(
        "SELECT total FROM tenancy.security_event_counts() WHERE event = 'bind_refused'",
    )
    .unwrap()
    .unwrap();
    // A refused bind inside a subtransaction that is rolled back.
    PgTryBuilder::new(|| {
        Spi::run("SELECT tenancy.bind('not-a-token')").unwrap();
    })
    .catch_others(|_| ())
    .execute();
    let after = Spi::get_one::<i64>(
        "SELECT total FROM tenancy.security_event_counts() WHERE event = 'bind_refused'",
    )
    .unwrap()
    .unwrap();
    assert_eq!(after, before + 1);
    let detail = Spi::get_one::<pgrx::JsonB>(
        "SELECT detail FROM tenancy.security_events() WHERE event = 'bind_refused' LIMIT 1",
    )
    .unwrap()
    .unwrap();
    assert_eq!(detail.0["event"], "bind_refused");
    assert!(detail.0["reason"].as_str().unwrap().contains("malformed"));
}

#[pg_test]
fn preloaded_library_leaves_databases_without_the_extension_alone() {
    // pg_test preloads pg_tenancy for the whole cluster; the `postgres` database has no
    // extension. A row-secured query there must behave as PostgreSQL alone would.
    Spi::run("CREATE EXTENSION IF NOT EXISTS dblink").unwrap();
    let conn = |user: &str| {
        format!(
            "SELECT dblink_connect('{user}', format('dbname=postgres host=%s port=%s user={user}', \
               split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port')))"
        )
    };
    Spi::run(&conn(&Spi::get_one::<String>("SELECT current_user::text").unwrap().unwrap())).unwrap();
    Spi::run(
        "SELECT dblink_exec(current_user::text, $$ \
           DO $d$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'probe_user') THEN \
             CREATE ROLE probe_user LOGIN; END IF; END $d$; \
           DROP TABLE IF EXISTS probe_rls; CREATE TABLE probe_rls (a int); INSERT INTO probe_rls VALUES (1); \
           ALTER TABLE probe_rls ENABLE ROW LEVEL SECURITY; \
           CREATE POLICY everyone ON probe_rls USING (true); GRANT SELECT ON probe_rls TO probe_user $$)",
    )
    .unwrap();
    Spi::run(&conn("probe_user")).unwrap();
    let n = Spi::get_one::<i64>(
        "SELECT n FROM dblink('probe_user', 'SELECT count(*) FROM probe_rls') AS t(n bigint)",
    )
    .unwrap()
    .unwrap();
    assert_eq!(n, 1);
    Spi::run("SELECT dblink_disconnect('probe_user')").unwrap();
}

/// The SQL paths' record hash (`tenancy._audit_row_hash`, which audit_verify and management
/// records use) is the writer's: its keyed hash of the same record text, for text needing every
/// kind of quoting, NULLs, jsonb and an inet shown with its mask as their SQL text; keyed with
/// the stored key, and not the plain SHA-256 of the text.
#[pg_test]
fn record_hash_matches_sql() {
    Spi::run("SELECT tenancy.create_tenant('hashed')").unwrap();
    let tenant = Spi::get_one::<pgrx::Uuid>("SELECT id FROM tenancy.tenant WHERE slug = 'hashed'")
        .unwrap()
        .unwrap();
    let cases: [[Option<&str>; 5]; 3] = [
        [Some("plain"), None, Some("{\"a\": 1}"), Some("app"), Some("127.0.0.1")],
        [Some("it's"), Some("back\\slash"), Some("{\"k\": \"O'Brien \\\\ \\n ✓\"}"), Some(""), None],
        [Some("E'x'"), Some("''"), None, Some("a\\'b"), Some("::1")],
    ];
    for [table, subject, row, app, addr] in cases {
        let keyed = Spi::get_one_with_args::<Vec<u8>>(
            "SELECT tenancy._audit_row_hash(42, $6, '2026-11-22 10:00:00.5+00', 7, $1, 'INSERT', NULL, NULL, \
                    $3::jsonb::text, 'r''ole', $2, $4, $5::inet::text)",
            &[table.into(), subject.into(), row.into(), app.into(), addr.into(), tenant.into()],
        )
        .unwrap()
        .unwrap();
        let row_text = row.map(|r| {
            Spi::get_one_with_args::<String>("SELECT $1::jsonb::text", &[r.into()])
                .unwrap()
                .unwrap()
        });
        let addr_text = addr.map(|a| {
            Spi::get_one_with_args::<String>("SELECT $1::inet::text", &[a.into()])
                .unwrap()
                .unwrap()
        });
        let tenant_text = crate::catalog::from_pg_uuid(&tenant).hyphenated().to_string();
        let rust = crate::audit::writer::record_text(&[
            Some(b"42"),
            Some(tenant_text.as_bytes()),
            Some(b"1795341600.500000"),
            Some(b"7"),
            table.map(str::as_bytes),
            Some(b"INSERT"),
            None,
            None,
            row_text.as_deref().map(str::as_bytes),
            Some(b"r'ole"),
            subject.map(str::as_bytes),
            app.map(str::as_bytes),
            addr_text.as_deref().map(str::as_bytes),
        ]);
        let mac = crate::audit::audit_mac(crate::catalog::from_pg_uuid(&tenant));
        assert_eq!(keyed, crate::audit::writer::record_hmac(&mac, &rust), "case {table:?} {subject:?} {row:?} {app:?} {addr:?}");
        // The kept MAC state is the stored key's.
        let secret = Spi::get_one_with_args::<Vec<u8>>(
            "SELECT secret FROM tenancy.audit_key WHERE tenant_id = $1",
            &[tenant.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            keyed,
            crate::audit::writer::record_hmac(&crate::audit::writer::record_mac(&secret), &rust)
        );
        // Keyed: not the plain SHA-256 of the text that anyone can compute.
        let plain = <sha2::Sha256 as sha2::Digest>::digest(&rust).to_vec();
        assert_ne!(keyed, plain);
    }
}

/// The writer formats occurred_at for the hash as `extract(epoch FROM occurred_at)::text`
/// does, also before 1970, on whole seconds and at microsecond precision.
#[pg_test]
fn epoch_text_matches_sql() {
    for ts in [
        "2026-11-22 10:00:00.5+00",
        "2026-11-22 10:00:00+00",
        "2026-11-22 10:00:00.000001+00",
        "1970-01-01 00:00:00+00",
        "1969-12-31 23:59:59.5+00",
        "1900-06-01 12:34:56.789012+00",
        "2000-01-01 00:00:00+00",
    ] {
        let (sql, micros) = Spi::get_two_with_args::<String, i64>(
            "SELECT extract(epoch FROM $1::timestamptz)::text, \
                    ((extract(epoch FROM $1::timestamptz) - 946684800) * 1000000)::bigint",
            &[ts.into()],
        )
        .unwrap();
        assert_eq!(
            crate::audit::writer::epoch_text(micros.unwrap()),
            sql.unwrap(),
            "{ts}"
        );
    }
}

/// The writer forms datums of the types it expects; a trail column retyped by hand (even to a
/// binary-compatible type) is a clear 55000, never bytes of one type in a column of another.
#[pg_test(
    error = "pg_tenancy cannot write the audit trail: column subject of tenancy.audit_log has type character varying, expected text"
)]
fn a_retyped_trail_column_is_refused_not_written() {
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run("SET LOCAL client_min_messages = error").unwrap();
    Spi::run("SELECT tenancy.map_role(session_user::regrole, 'acme', '{member}')").unwrap();
    Spi::run("CREATE TABLE retyped_docs (tenant_id uuid, id int)").unwrap();
    Spi::run("SELECT tenancy.protect('retyped_docs')").unwrap();
    Spi::run("INSERT INTO retyped_docs (id) VALUES (1)").unwrap();
    Spi::run("ALTER TABLE tenancy.audit_log ALTER COLUMN subject TYPE varchar").unwrap();
    Spi::run("INSERT INTO retyped_docs (id) VALUES (2)").unwrap();
}

/// A backend resolves the tenants it meets one by one, then (after LOAD_ALL_AFTER of them)
/// loads the whole catalog: every slug and uuid must resolve the same on both sides of that
/// switch.
#[pg_test]
fn tenants_resolve_the_same_before_and_after_the_catalog_is_loaded_whole() {
    Spi::run("SELECT tenancy.create_tenant('bulk-' || g) FROM generate_series(1, 80) g").unwrap();
    for by in ["t.slug", "t.id::text"] {
        let (n, wrong) = Spi::get_two::<i64, i64>(&format!(
            "SELECT count(*), count(*) FILTER (WHERE v.tenant IS DISTINCT FROM t.id) \
               FROM (SELECT * FROM tenancy.tenants WHERE slug LIKE 'bulk-%' ORDER BY slug) t, \
                    LATERAL tenancy.audit_verify({by}) v"
        ))
        .unwrap();
        assert_eq!((n, wrong), (Some(80), Some(0)), "resolving by {by}");
    }
}

/// The platform's records (management actions that concern no tenant) have the nil uuid as
/// tenant_id, never NULL: it is part of the trail's key. One forged under it is caught like a
/// tenant's.
#[pg_test]
fn a_forged_platform_record_is_not_in_the_chain() {
    Spi::run("CREATE SCHEMA platform_action; SELECT tenancy.auto_protect('platform_action')").unwrap();
    let tenant = Spi::get_one::<String>(
        "SELECT tenant_id::text FROM tenancy.audit_log WHERE new_row->>'action' = 'auto_protect'",
    )
    .unwrap();
    assert_eq!(tenant.as_deref(), Some("00000000-0000-0000-0000-000000000000"));
    Spi::run("SET LOCAL session_replication_role = replica").unwrap();
    Spi::run(
        "INSERT INTO tenancy.audit_log (tenant_id, op, new_row, db_role) \
         VALUES ('00000000-0000-0000-0000-000000000000', 'ADMIN', '{\"action\": \"forged\"}', 'mallory')",
    )
    .unwrap();
    Spi::run("RESET session_replication_role").unwrap();
    let detail = Spi::get_one::<String>(
        "SELECT detail FROM tenancy.audit_verify() WHERE tenant = '00000000-0000-0000-0000-000000000000'",
    )
    .unwrap()
    .unwrap_or_default();
    assert!(detail.contains("not in the chain"), "{detail}");
}

/// An HS256 token for the pg_tests, signed with `secret` under `kid`.
fn hs256_token(kid: &str, secret: &str, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The roles in the binding `tenancy.bind(token)` returns.
fn bound_roles(token: &str) -> String {
    Spi::get_one_with_args::<String>(
        "SELECT (tenancy.bind($1) -> 'roles')::text",
        &[token.into()],
    )
    .unwrap()
    .unwrap()
}

/// `bind` builds its result straight into jsonb: it must be the same value PostgreSQL makes of
/// the same fields, with quotes, backslashes, control characters and non-ASCII text in them,
/// and `tenancy.binding()` must describe the binding the same way.
#[pg_test]
fn the_binding_description_is_the_json_of_its_fields() {
    let secret = "0123456789abcdef0123456789abcdef";
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run(&format!("SELECT tenancy.add_key('k', 'HS256', '{secret}')")).unwrap();
    // Quotes, a backslash and characters beyond ASCII (control characters are refused in
    // claims: attacks_binding.rs).
    let subject = "he said \"hi\" \\ \u{e9}\u{1f600}";
    Spi::run_with_args(
        "SELECT tenancy.add_member('acme', $1, 'viewer')",
        &[subject.into()],
    )
    .unwrap();
    let exp = 4_102_444_800i64; // 2100-01-01
    let token = hs256_token(
        "k",
        secret,
        serde_json::json!({"tid": "acme", "sub": subject, "exp": exp}),
    );
    let same = Spi::get_one_with_args::<bool>(
        "SELECT b = jsonb_build_object(
                    'tenant', (SELECT id FROM tenancy.tenant WHERE slug = 'acme')::text,
                    'slug', 'acme', 'subject', $2::text, 'roles', jsonb_build_array('viewer'),
                    'expires_at', '2100-01-01T00:00:00Z', 'scope', 'transaction',
                    'source', 'token', 'support_privileges', NULL)
                AND b = tenancy.binding()
           FROM tenancy.bind($1) b",
        &[token.as_str().into(), subject.into()],
    )
    .unwrap();
    assert_eq!(same, Some(true));
}

/// A backend keeps what a token's bind derived from the catalog for the token's next bind. In
/// one backend, with no other session's changes to refresh it by accident: a catalog change
/// (a membership) shows in the next bind, and a key's `not_after`, which passes with no change
/// at all, refuses the next bind of a token that bound a moment before.
#[pg_test(error = "token signing key \"short\" has expired")]
fn a_cached_bind_sees_catalog_changes_and_the_key_expiring() {
    let secret = "0123456789abcdef0123456789abcdef";
    Spi::run("SELECT tenancy.create_tenant('acme', settings => '{\"default_roles\": [\"member\"]}')")
        .unwrap();
    Spi::run(&format!(
        "SELECT tenancy.add_key('short', 'HS256', '{secret}', \
                not_after => clock_timestamp() + interval '2 seconds')"
    ))
    .unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = hs256_token(
        "short",
        secret,
        serde_json::json!({"tid": "acme", "sub": "u", "exp": exp}),
    );
    assert_eq!(bound_roles(&token), r#"["member"]"#);
    assert_eq!(bound_roles(&token), r#"["member"]"#);
    Spi::run("SELECT tenancy.add_member('acme', 'u', 'viewer')").unwrap();
    assert_eq!(bound_roles(&token), r#"["viewer"]"#);
    // not_after is kept to the second.
    Spi::run("SELECT pg_sleep(3.1)").unwrap();
    bound_roles(&token);
}

/// Evaluates `expr` compiled against `params` (both at compile time and at run time).
///
/// # Safety
/// Inside a transaction; `expr` must be a valid expression tree and `params` null or a valid
/// parameter list, both alive for the call.
unsafe fn eval_with_params(
    expr: *mut pg_sys::Expr,
    params: pg_sys::ParamListInfo,
) -> (pg_sys::Datum, bool) {
    // SAFETY: `expr` and `params` are valid (this function's contract); ExecInitExprWithParams
    // returns a compiled, non-null ExprState whose evalfunc is set, and the standalone
    // expression context (in the current memory context) is given the same parameter list
    // the expression was compiled against. The evaluation raises in the tests that call this
    // (a parameter with no value, no tenant bound): it goes through the FFI guard, so the
    // error comes back as a Rust panic instead of jumping over the test's Rust frames.
    unsafe {
        let state = pg_sys::ExecInitExprWithParams(expr, params);
        let econtext = pg_sys::CreateStandaloneExprContext();
        (*econtext).ecxt_param_list_info = params;
        let mut isnull = false;
        let evalfunc = (*state).evalfunc.unwrap();
        let value =
            pg_sys::ffi::pg_guard_ffi_boundary(|| evalfunc(state, econtext, &mut isnull));
        (value, isnull)
    }
}

/// The fail-closed half of binding_param.rs's argument: compiled without the executor hook's
/// parameter list, a reserved parameter has no value, and PostgreSQL raises.
#[pg_test(error = "no value found for parameter 1000000000")]
fn reserved_parameter_without_the_executor_hook_has_no_value() {
    // SAFETY: inside the test's transaction: a reserved Param palloc'd in the current memory
    // context, evaluated without a parameter list.
    unsafe {
        let p = crate::pg::binding_param::reserved_param(crate::pg::binding_param::RESERVED_BASE);
        eval_with_params(p as *mut pg_sys::Expr, std::ptr::null_mut());
    }
}

/// The executor hook's copy of a parameter list answers ordinary parameters from the original
/// list, and a reserved one from the binding (none here: the statement fails).
#[pg_test(error = "no tenant bound: table \"pg_catalog.pg_class\" is protected")]
fn wrapped_parameter_list_answers_ordinary_and_reserved_parameters() {
    // SAFETY: inside the test's transaction. makeParamList(1) returns a list with room for
    // one entry, filled here with a constant int4 before it is wrapped; the Param is zeroed by
    // palloc0 and filled as makeNode(Param) would (int4, like the entry it names). All are
    // palloc'd in the current memory context, alive for the test.
    unsafe {
        let orig = pg_sys::makeParamList(1);
        let e = (*orig).params.as_mut_ptr();
        (*e).value = pg_sys::Datum::from(42i32);
        (*e).isnull = false;
        (*e).pflags = pg_sys::PARAM_FLAG_CONST as u16;
        (*e).ptype = pg_sys::INT4OID;
        let wrapped = crate::pg::binding_param::wrap(orig);
        assert!(!std::ptr::eq(wrapped, orig));
        let p = pg_sys::palloc0(std::mem::size_of::<pg_sys::Param>()) as *mut pg_sys::Param;
        (*p).xpr.type_ = pg_sys::NodeTag::T_Param;
        (*p).paramkind = pg_sys::ParamKind::PARAM_EXTERN;
        (*p).paramid = 1;
        (*p).paramtype = pg_sys::INT4OID;
        (*p).paramtypmod = -1;
        let (v, isnull) = eval_with_params(p as *mut pg_sys::Expr, wrapped);
        assert!(!isnull);
        assert_eq!(v.value() as i32, 42);
        let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'pg_class'::regclass::oid")
            .unwrap()
            .unwrap();
        let id = crate::pg::binding_param::reserve(relid, "select").unwrap();
        let r = crate::pg::binding_param::reserved_param(id);
        eval_with_params(r as *mut pg_sys::Expr, wrapped);
    }
}

/// A parameter list read through its fetch hook (PL/pgSQL's: a header saying `numParams`
/// entries and holding none) is wrapped without its entries: the copy is the header and the
/// wrapper's trailer, never `numParams` entries read past the list's end (an attacker's pass
/// had a function of a million variables copy 16 MB from a 64-byte list at every statement).
#[pg_test]
fn a_parameter_list_read_through_its_fetch_hook_is_wrapped_without_entries() {
    #[pg_guard]
    unsafe extern "C-unwind" fn fetch(
        _params: pg_sys::ParamListInfo,
        _id: std::ffi::c_int,
        _speculative: bool,
        workspace: *mut pg_sys::ParamExternData,
    ) -> *mut pg_sys::ParamExternData {
        workspace
    }
    // SAFETY: inside the test's transaction: makeParamList(0) returns a header-only list in
    // the current memory context, given a fetch hook and a count of entries it does not hold,
    // as plpgsql_estate_setup makes one; the wrapper is palloc'd in the same context, and
    // GetMemoryChunkSpace reads the size of that chunk.
    unsafe {
        let orig = pg_sys::makeParamList(0);
        (*orig).paramFetch = Some(fetch);
        (*orig).numParams = 1_000_000;
        let wrapped = crate::pg::binding_param::wrap(orig);
        assert_eq!((*wrapped).numParams, 1_000_000);
        assert!((*wrapped).paramFetch.is_some());
        let size = pg_sys::GetMemoryChunkSpace(wrapped.cast());
        assert!(size < 1024, "the wrapper took {size} bytes");
    }
}

/// A reserved parameter compiles to a call (src/pg/binding_param.rs, `eval_reserved`) that
/// computes the tenant at its first evaluation and keeps it: evaluated again and again in one
/// compiled expression, as a scan's qual is, it answers the bound tenant every time. The
/// expression's result is cleared between evaluations, so a later evaluation that skipped the
/// value would show. A failed first evaluation (no tenant bound) leaves the value uncomputed,
/// so the next evaluation computes again instead of answering an unset value.
#[pg_test]
fn a_reserved_parameter_answers_every_evaluation_with_the_bound_tenant() {
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run("CREATE TABLE kept (tenant_id uuid, x int)").unwrap();
    Spi::run("SELECT tenancy.protect('kept')").unwrap();
    Spi::run("SET LOCAL client_min_messages = error").unwrap();
    let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'kept'::regclass::oid")
        .unwrap()
        .unwrap();
    // SAFETY: inside the test's transaction: the reserved Param and the wrapper of no list
    // are palloc'd in the current memory context, as are the compiled state and the
    // expression context, all alive for the test. The state's first step is read while the
    // state lives; every evaluation goes through the FFI guard, and its value, a uuid datum
    // when not null (asserted), points at the Reserved's 16 bytes in the state's memory.
    unsafe {
        let id = crate::pg::binding_param::reserve(relid, "select").unwrap();
        let p = crate::pg::binding_param::reserved_param(id);
        let params = crate::pg::binding_param::wrap(std::ptr::null_mut());
        let state = pg_sys::ExecInitExprWithParams(p as *mut pg_sys::Expr, params);
        let econtext = pg_sys::CreateStandaloneExprContext();
        (*econtext).ecxt_param_list_info = params;
        let op = || pg_sys::ExecEvalStepOp(state, (*state).steps);
        let eval = || {
            (*state).resvalue = pg_sys::Datum::from(0usize);
            (*state).resnull = true;
            let mut isnull = true;
            // Guarded, so that the error of an unbound evaluation comes back as a Rust panic.
            let v = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                (*state).evalfunc.unwrap()(state, econtext, &mut isnull)
            });
            assert!(!isnull);
            std::slice::from_raw_parts(v.cast_mut_ptr::<u8>(), 16).to_vec()
        };
        assert_eq!(op(), pg_sys::ExprEvalOp::EEOP_PARAM_CALLBACK);
        // No tenant bound yet: the evaluation raises, and the step stays a call.
        let failed = PgTryBuilder::new(|| {
            eval();
            false
        })
        .catch_others(|_| true)
        .execute();
        assert!(failed, "an unbound evaluation must raise");
        assert_eq!(op(), pg_sys::ExprEvalOp::EEOP_PARAM_CALLBACK);
        Spi::run("SELECT tenancy.map_role(session_user::regrole, 'acme', '{member}')").unwrap();
        let tenant = Spi::get_one::<pgrx::Uuid>("SELECT tenancy.current_tenant()")
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            assert_eq!(eval(), tenant.as_bytes());
            assert_eq!(op(), pg_sys::ExprEvalOp::EEOP_PARAM_CALLBACK);
        }
    }
}

/// Tenant `acme` and protected table `table`, read by `reader`, a NOSUPERUSER NOBYPASSRLS role
/// (superusers bypass row security) that this transaction then acts as, in a session mapped to
/// `acme`.
fn protected_table_read_by(table: &str, reader: &str) {
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run(&format!("CREATE TABLE {table} (tenant_id uuid, x int)")).unwrap();
    Spi::run(&format!("SELECT tenancy.protect('{table}')")).unwrap();
    Spi::run("SET LOCAL client_min_messages = error").unwrap();
    Spi::run("SELECT tenancy.map_role(session_user::regrole, 'acme', '{member}')").unwrap();
    Spi::run(&format!("CREATE ROLE {reader} NOSUPERUSER NOBYPASSRLS")).unwrap();
    Spi::run(&format!("GRANT SELECT ON {table} TO {reader}")).unwrap();
    Spi::run(&format!("SET LOCAL ROLE {reader}")).unwrap();
}

/// `sql` (one statement) parsed, analysed and rewritten as the current role (row security
/// applied), then planned with `bound` as its parameter values: a non-null list plans a custom
/// plan, null plans as a cached plan is planned.
///
/// # Safety
/// Inside a transaction; `bound` null or a valid parameter list. The plan is palloc'd in the
/// current memory context.
unsafe fn planned(sql: &std::ffi::CStr, bound: pg_sys::ParamListInfo) -> *mut pg_sys::PlannedStmt {
    // SAFETY: this function's contract: the query text parses to one statement, analysed and
    // rewritten to one Query, planned once.
    unsafe {
        let raw = pg_sys::pg_parse_query(sql.as_ptr());
        let rawstmt = (*(*raw).elements).ptr_value as *mut pg_sys::RawStmt;
        let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
            rawstmt,
            sql.as_ptr(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        let q = (*(*queries).elements).ptr_value as *mut pg_sys::Query;
        pg_sys::pg_plan_query(q, sql.as_ptr(), 0, bound)
    }
}

/// A statement planned with its parameters' values (a custom plan) in a session bound to a
/// tenant, on a protected table read by a NOSUPERUSER role (superusers bypass row security):
/// planned with the tenant as a constant and stamped (src/pg/binding_param.rs). Returns the
/// plan and the query text it was planned from.
///
/// # Safety
/// Inside the test's transaction; the plan is palloc'd in the current memory context.
unsafe fn folded_plan_of_kept() -> (*mut pg_sys::PlannedStmt, &'static std::ffi::CStr) {
    protected_table_read_by("kept", "fold_reader");
    let sql = c"SELECT count(*) FROM kept";
    // SAFETY: inside the transaction (this function's contract), with an empty parameter list
    // (a custom plan's, non-null).
    (unsafe { planned(sql, pg_sys::makeParamList(0)) }, sql)
}

/// Once a backend has given out every reserved number (MAX_RESERVED pairs of table and
/// privilege), a cached plan of a table it has not numbered keeps the policy's call in a scalar
/// subquery, one InitPlan per statement, not a reserved parameter that has no number, and not
/// the bare call evaluated per row (src/pg/binding_param.rs).
#[pg_test]
fn beyond_the_reserved_numbers_a_policy_is_planned_as_written() {
    protected_table_read_by("capped", "cap_reader");
    let sql = c"SELECT count(*) FROM capped WHERE x > 0";
    // SAFETY: inside the test's transaction, planned as a cached plan is (no parameter values,
    // a query text that is not the client's), and shown as text.
    let plan = || unsafe {
        let stmt = planned(sql, std::ptr::null_mut());
        std::ffi::CStr::from_ptr(pg_sys::nodeToString(stmt as *const std::ffi::c_void))
            .to_string_lossy()
            .into_owned()
    };
    crate::pg::binding_param::cap_reserved_for_test(Some(()));
    let capped = plan();
    crate::pg::binding_param::cap_reserved_for_test(None);
    let numbered = plan();
    assert!(!capped.contains(":paramid 10000"), "no reserved number left: {capped}");
    assert!(capped.contains(":initPlan ({SUBPLAN"), "one InitPlan: {capped}");
    // The call runs in the InitPlan's own plan (the statement's `:subplans`), never in the
    // plan tree, where a scan would evaluate it for every row.
    let funcid = Spi::get_one::<pg_sys::Oid>(
        "SELECT 'tenancy.allowed_tenant(regclass, text)'::regprocedure::oid",
    )
    .unwrap()
    .unwrap();
    let call = format!(":funcid {} ", u32::from(funcid));
    let (tree, subplans) = capped.split_once(":subplans").expect("a plan's fields");
    assert!(!tree.contains(&call), "the call is in the plan tree: {tree}");
    assert!(subplans.contains(&call), "the call is the InitPlan's: {subplans}");
    assert!(numbered.contains(":paramid 10000"), "numbered again: {numbered}");
    assert!(!numbered.contains(":initPlan ({SUBPLAN"), "{numbered}");
}

/// The (cache id, hash value) items of a plan's invalidation list.
///
/// # Safety
/// `stmt` must be a valid PlannedStmt.
unsafe fn inval_items(stmt: *mut pg_sys::PlannedStmt) -> Vec<*mut pg_sys::PlanInvalItem> {
    // SAFETY: `stmt` is valid (this function's contract): its list is null or holds
    // PlanInvalItem nodes.
    unsafe {
        let l = (*stmt).invalItems;
        if l.is_null() {
            return Vec::new();
        }
        (0..(*l).length as usize)
            .map(|i| (*(*l).elements.add(i)).ptr_value as *mut pg_sys::PlanInvalItem)
            .collect()
    }
}

/// Starts (EXPLAIN only: nothing is read) and ends `stmt`, through the ExecutorStart hooks.
///
/// # Safety
/// Inside the transaction, with an active snapshot; `stmt` a valid plan of `sql`.
unsafe fn start_plan(stmt: *mut pg_sys::PlannedStmt, sql: &std::ffi::CStr) {
    // SAFETY: this function's contract; the QueryDesc is made, started, ended and freed here,
    // and a raise inside the start comes back as a Rust panic through the FFI guard.
    unsafe {
        let qd = pg_sys::CreateQueryDesc(
            stmt,
            sql.as_ptr(),
            pg_sys::GetActiveSnapshot(),
            std::ptr::null_mut(),
            pg_sys::None_Receiver,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        pg_sys::ExecutorStart(qd, pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32);
        pg_sys::ExecutorEnd(qd);
        pg_sys::FreeQueryDesc(qd);
    }
}

/// A plan holding the bound tenant as a constant starts only under that tenant: with its stamp
/// naming another tenant (here one this backend never folded), it fails to start instead of
/// reading rows (src/pg/binding_param.rs, check_folded).
#[pg_test(error = "pg_tenancy: this plan was made for another tenant binding")]
fn a_plan_holding_a_tenant_does_not_start_under_another_binding() {
    // SAFETY: inside the test's transaction, as the helpers require.
    unsafe {
        let (stmt, sql) = folded_plan_of_kept();
        let tenant = Spi::get_one::<String>("SELECT tenancy.current_tenant()::text")
            .unwrap()
            .unwrap();
        let text = std::ffi::CStr::from_ptr(pg_sys::nodeToString(stmt as *const std::ffi::c_void))
            .to_string_lossy()
            .into_owned();
        assert!(!text.contains(":paramid 1000000000"), "a constant, not the reserved parameter");
        let items = inval_items(stmt);
        let amname = pg_sys::SysCacheIdentifier::AMNAME as i32;
        let stamp: Vec<_> = items.into_iter().filter(|i| (**i).cacheId == amname).collect();
        assert_eq!(stamp.len(), 1, "one tenant stamp ({tenant})");
        // Under the binding it was made for, it starts.
        start_plan(stmt, sql);
        // Stamped with another tenant's serial, it does not.
        let s0 = stamp[0];
        (*s0).hashValue = (*s0).hashValue.wrapping_add(1000);
        start_plan(stmt, sql);
    }
}

/// A plan holding the tenant as a constant computes the tenant again when it starts: with the
/// binding gone (the role's mapping removed after planning), it raises what the policy raises.
#[pg_test(error = "role \"postgres\" is no longer mapped to tenant \"acme\"")]
fn a_plan_holding_a_tenant_does_not_start_without_the_binding() {
    // SAFETY: inside the test's transaction, as the helpers require.
    unsafe {
        let (stmt, sql) = folded_plan_of_kept();
        start_plan(stmt, sql);
        Spi::run("RESET ROLE").unwrap();
        Spi::run("SELECT tenancy.unmap_role(session_user::regrole, 'acme')").unwrap();
        Spi::run("SET LOCAL ROLE fold_reader").unwrap();
        start_plan(stmt, sql);
    }
}

/// `tenancy.bind(token)` binds for the transaction, `tenancy.bind(token, 'session')` (also in
/// named notation, `scope => 'session'`) for the session: two functions, so that a call with one
/// argument reads no default from the catalog.
#[pg_test]
fn bind_with_one_argument_binds_the_transaction_and_with_two_the_scope_named() {
    let secret = "0123456789abcdef0123456789abcdef";
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    Spi::run(&format!("SELECT tenancy.add_key('k', 'HS256', '{secret}')")).unwrap();
    let token = hs256_token(
        "k",
        secret,
        serde_json::json!({"tid": "acme", "sub": "u", "exp": 4_102_444_800i64}),
    );
    let scope = |sql: &str| {
        Spi::get_one_with_args::<pgrx::JsonB>(sql, &[token.as_str().into()])
            .unwrap()
            .unwrap()
            .0["scope"]
            .clone()
    };
    assert_eq!(scope("SELECT tenancy.bind($1)"), "transaction");
    assert_eq!(scope("SELECT tenancy.bind(token => $1)"), "transaction");
    assert_eq!(scope("SELECT tenancy.bind($1, 'transaction')"), "transaction");
    assert_eq!(scope("SELECT tenancy.bind($1, scope => 'session')"), "session");
    Spi::run("SELECT tenancy.unbind()").unwrap();
}

/// The executor hook skips its privilege check while the protected tables are being read (it
/// must not recurse into its own query). An error during that read must not leave the flag set
/// for the rest of the backend's life.
#[pg_test]
fn an_error_while_reading_the_protected_tables_resets_the_loading_flag() {
    Spi::run("SELECT tenancy.create_tenant('acme')").unwrap();
    // SAFETY: an internal subtransaction around code that raises, rolled back before the
    // memory context and resource owner of the test are restored (as PL handlers do).
    let failed = unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let failed = PgTryBuilder::new(|| {
            Spi::run("ALTER TABLE tenancy.protected_table RENAME TO protected_table_gone").unwrap();
            crate::catalog::invalidate();
            crate::catalog::protected_relids();
            false
        })
        .catch_others(|_| true)
        .execute();
        pg_sys::RollbackAndReleaseCurrentSubTransaction();
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        failed
    };
    assert!(failed, "reading a missing table must fail");
    assert!(!crate::catalog::loading_protected());
    crate::catalog::invalidate();
    assert!(crate::catalog::protected_relids().is_some());
}

#[pg_test]
fn columns_reaching_a_type_defined_in_the_database_are_found_at_any_depth() {
    // Such a column's values are recorded as their output text: to_jsonb would call a cast to
    // json its type's owner wrote (src/pg/row_json.rs).
    Spi::run(
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0); \
         CREATE TYPE plain_pair AS (a int, b text); \
         CREATE TYPE mood AS ENUM ('happy', 'sad'); \
         CREATE TYPE mood_pair AS (n int, m mood); \
         CREATE DOMAIN mood_d AS mood; \
         CREATE TYPE span AS RANGE (subtype = int4); \
         CREATE TABLE built_in (a int, b int[], c positive, d plain_pair, e plain_pair[], f jsonb); \
         CREATE TABLE enum_array (a int, m mood[]); \
         CREATE TABLE nested (a int, p mood_pair[]); \
         CREATE TABLE via_domain (a int, d mood_d); \
         CREATE TABLE ranged (r span)",
    )
    .unwrap();
    let found = |t: &str| {
        let oid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{t}'::regclass::oid"))
            .unwrap()
            .unwrap();
        crate::audit::column_of_a_defined_type(oid).map(|(c, _)| c)
    };
    assert_eq!(found("built_in"), None);
    assert_eq!(found("enum_array").as_deref(), Some("m"));
    assert_eq!(found("nested").as_deref(), Some("p"));
    assert_eq!(found("via_domain").as_deref(), Some("d"));
    assert_eq!(found("ranged").as_deref(), Some("r"));
}

#[pg_test]
fn a_security_events_long_strings_are_cut() {
    // An attacker's pass wrote 20 MB log lines by naming a 10 MB tenant in a refused call.
    let long = "x".repeat(10_000);
    let v = crate::events::shortened(serde_json::json!({"tenant": long, "n": 1, "list": [long]}));
    let line = v.to_string();
    assert!(line.len() < 700, "{}", line.len());
    assert!(line.contains("...(10000 bytes)"));
    let short = serde_json::json!({"tenant": "acme"});
    assert_eq!(crate::events::shortened(short.clone()), short);
}

#[pg_test]
fn a_validation_is_remembered_only_while_nothing_it_read_changes() {
    // src/binding/memo.rs: the key moves with every input of a binding's validation.
    use crate::binding::memo::{self, Tracked, TrackedCell};
    let k = memo::key(1);
    assert!(k.is_some(), "not a connection Citus opened: the memo is used");
    memo::remember(k);
    assert!(memo::validated(memo::key(1)));
    // The clock, to the second.
    assert!(!memo::validated(memo::key(2)));
    // Any write of the binding's state; reads and writes of an unchanged value move nothing.
    let state: Tracked<u8> = Tracked::new(0);
    assert_eq!(*state.borrow(), 0);
    assert!(memo::validated(memo::key(1)));
    *state.borrow_mut() = 1;
    assert!(!memo::validated(memo::key(1)));
    memo::remember(memo::key(1));
    let flag = TrackedCell::new(false);
    flag.set(false);
    assert!(memo::validated(memo::key(1)));
    flag.set(true);
    assert!(!memo::validated(memo::key(1)));
    // The catalog.
    memo::remember(memo::key(1));
    crate::catalog::invalidate();
    assert!(!memo::validated(memo::key(1)));
    // The current role.
    Spi::run("CREATE ROLE memo_role").unwrap();
    memo::remember(memo::key(1));
    Spi::run("SET ROLE memo_role").unwrap();
    assert!(!memo::validated(memo::key(1)));
    Spi::run("RESET ROLE").unwrap();
    assert!(memo::validated(memo::key(1)));
    // The session's role.
    memo::remember(memo::key(1));
    Spi::run("SET SESSION AUTHORIZATION memo_role").unwrap();
    assert!(!memo::validated(memo::key(1)));
    Spi::run("RESET SESSION AUTHORIZATION").unwrap();
    // A change announced for one tenant arrives (a targeted invalidation, as invalidation
    // processing delivers it to the callbacks).
    memo::remember(memo::key(1));
    // SAFETY: inside the test's transaction; runs this backend's callbacks of pg_am's cache,
    // which carries pg_tenancy's targeted invalidations (src/pg/targeted_inval.rs).
    unsafe {
        pgrx::pg_sys::CallSyscacheCallbacks(pgrx::pg_sys::SysCacheIdentifier::AMNAME as i32, 12345)
    };
    assert!(!memo::validated(memo::key(1)));
    // A validation during which the catalog moved is not remembered; its own writes are.
    let before = memo::key(1);
    crate::catalog::invalidate();
    memo::remember_unless_moved(before, memo::key(1));
    assert!(!memo::validated(memo::key(1)));
    let before = memo::key(1);
    *state.borrow_mut() = 2;
    memo::remember_unless_moved(before, memo::key(1));
    assert!(memo::validated(memo::key(1)));
    // Nor one during which roles changed (a role made a platform operator meanwhile).
    let before = memo::key(1);
    memo::roles_changed();
    memo::remember_unless_moved(before, memo::key(1));
    assert!(!memo::validated(memo::key(1)));
    // The settings a validation reads.
    memo::remember(memo::key(1));
    Spi::run("SET tenancy.clock_skew = 5").unwrap();
    assert!(!memo::validated(memo::key(1)));
    memo::remember(memo::key(1));
    Spi::run("SET tenancy.region = 'elsewhere'").unwrap();
    assert!(!memo::validated(memo::key(1)));
    // Nothing remembered: nothing validated.
    memo::remember(None);
    assert!(!memo::validated(memo::key(1)));
}
