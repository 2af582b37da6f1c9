import { tenancy } from './tenancy-plugin.js'

export * from '../lib/index.js'
export { tenancy, type TenancyPluginOptions } from './tenancy-plugin.js'
export type { TokenOptions } from './instance-binding.js'
export type {} from '../types/fastify.js'
export default tenancy
