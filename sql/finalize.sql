-- pg_tenancy finalize: objects that need the generated functions, and privileges.

-- Every change to the catalog tables queues a relcache invalidation, so every backend drops its
-- cached tenants, keys, members and mappings when the change commits.
CREATE TRIGGER catalog_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.tenant
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER catalog_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.signing_key
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER catalog_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.tenant_role
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER catalog_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.member
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER catalog_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.role_mapping
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();

-- Tenants: operators see every tenant, a bound session sees its own.
CREATE VIEW tenancy.tenants WITH (security_barrier) AS
    SELECT id, slug, name, status, region, settings, created_at, status_reason, status_changed_at
      FROM tenancy.tenant
     WHERE tenancy._sees_tenant(id);
GRANT SELECT ON tenancy.tenants TO PUBLIC;

-- Keys: metadata only (never key material), for operators.
CREATE VIEW tenancy.keys WITH (security_barrier) AS
    SELECT kid, alg, tenant_id, not_after, revoked_at, created_at, created_by
      FROM tenancy.signing_key
     WHERE tenancy.is_operator();
GRANT SELECT ON tenancy.keys TO tenancy_operator;

CREATE VIEW tenancy.role_mappings WITH (security_barrier) AS
    SELECT role, tenant_id, tenant_roles, created_at
      FROM tenancy.role_mapping
     WHERE tenancy.is_operator();
GRANT SELECT ON tenancy.role_mappings TO tenancy_operator;

-- Platform calls are for operators (checked again inside each function).
REVOKE EXECUTE ON FUNCTION tenancy.create_tenant(text, text, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenancy.suspend_tenant(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenancy.resume_tenant(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenancy.add_key(text, text, text, text, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenancy.revoke_key(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenancy.map_role(regrole, text, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenancy.unmap_role(regrole, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tenancy.catalog_changed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.create_tenant(text, text, text, jsonb) TO tenancy_operator;
GRANT EXECUTE ON FUNCTION tenancy.suspend_tenant(text, text) TO tenancy_operator;
GRANT EXECUTE ON FUNCTION tenancy.resume_tenant(text) TO tenancy_operator;
GRANT EXECUTE ON FUNCTION tenancy.add_key(text, text, text, text, timestamptz) TO tenancy_operator;
GRANT EXECUTE ON FUNCTION tenancy.revoke_key(text) TO tenancy_operator;
GRANT EXECUTE ON FUNCTION tenancy.map_role(regrole, text, text[]) TO tenancy_operator;
GRANT EXECUTE ON FUNCTION tenancy.unmap_role(regrole, text) TO tenancy_operator;
