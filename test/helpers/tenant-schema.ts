import type { Generated } from 'kysely'
import { query } from './database.js'

/** The tables of the tenant-filter tests: keys collide across instances on purpose. */
export interface TenantDB {
  student: { id: number, iid: Generated<number>, name: string, course_id: number | null }
  course: { id: number, iid: Generated<number>, title: string }
  /** A `may` table: `iid` null is a host row. */
  role: { id: number, iid: number | null, name: string }
  /** `id` alone is unique: ON CONFLICT meets other instances' rows. */
  tag: { id: number, iid: Generated<number>, label: string }
  country: { code: string, name: string }
}

/** Instances 1, 2 and 3 (`a`, `b`, `c`) and an empty one, 4 (`d`). */
export const schemaInstances = [
  { name: 'a', id: 1 }, { name: 'b', id: 2 }, { name: 'c', id: 3 }, { name: 'd', id: 4 },
]

/** Creates the tables and rows: every instance 1–3 has students 1–4, courses 1–3, roles 1–2; host roles 1–2; tags 1–3 of instance 1, 4–6 of 2, … */
export async function createTenantSchema (url: string): Promise<void> {
  await query(url, `
    create table course (id int not null, iid int not null, title text not null, primary key (iid, id));
    create table student (id int not null, iid int not null, name text not null, course_id int, primary key (iid, id));
    create table role (id int not null, iid int, name text not null);
    create table tag (id int primary key, iid int not null, label text not null);
    create table country (code text primary key, name text not null);
    insert into country values ('fr', 'France'), ('de', 'Germany');
    insert into course select c, i, 'course ' || c || ' of ' || i from generate_series(1, 3) c, generate_series(1, 3) i;
    insert into student select s, i, 'student ' || s || ' of ' || i, case when s = 4 then null else (s % 3) + 1 end from generate_series(1, 4) s, generate_series(1, 3) i;
    insert into role select r, i, 'role ' || r || ' of ' || i from generate_series(1, 2) r, generate_series(1, 3) i;
    insert into role values (1, null, 'host role 1'), (2, null, 'host role 2');
    insert into tag select (i - 1) * 3 + n, i, 'tag ' || n || ' of ' || i from generate_series(1, 3) n, generate_series(1, 3) i;
  `)
}
