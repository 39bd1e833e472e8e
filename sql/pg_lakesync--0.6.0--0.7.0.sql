-- pg_lakesync 0.6.0 -> 0.7.0: full replaces swap in a new table (frozen pages, indexes built
-- beside, files swapped under a short lock); SNAPSHOT re-syncs apply only changed files when
-- few; incremental syncs switch to a full refresh above the measured crossover (option
-- full_refresh_above). No catalog or function changes: the new behaviour is all in the library.
\echo Use "ALTER EXTENSION pg_lakesync UPDATE TO '0.7.0'" to load this file. \quit
