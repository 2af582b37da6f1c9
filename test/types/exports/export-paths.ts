// Every export path of package.json, imported by package name as a user would.
import tenancy, { tenancy as named, createTenancy, runAsInstance, InstanceFilterPlugin, TenancyError, type TenancyPluginOptions } from 'fastify-tenancy'
import * as lib from 'fastify-tenancy/lib'
import { createTenancy as fromLib, type TenancyOptions } from 'fastify-tenancy/lib'
import packageJson from 'fastify-tenancy/package.json' with { type: 'json' }

const plugin: typeof named = tenancy
const sameFactory: typeof createTenancy = fromLib
const options: TenancyOptions = { instances: [{ name: '', id: 1 }], datasources: { default: 'postgres://localhost/x' } }
const pluginOptions: TenancyPluginOptions = { ...options, resolve: { headerField: 'x-tenant' } }
// The framework-free entry has no Fastify plugin: its types must not claim one.
// @ts-expect-error: 'tenancy' is not exported by fastify-tenancy/lib
lib.tenancy
// @ts-expect-error: nor a default export
lib.default
const version: string = packageJson.version
export { plugin, sameFactory, pluginOptions, runAsInstance, InstanceFilterPlugin, TenancyError, version }
