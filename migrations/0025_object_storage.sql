-- File content may live in an S3-compatible bucket (storage.backend = "s3") instead of
-- `file_chunks`. Each file says where its content is, so a deployment that changes backend
-- still reads the files it stored before.
ALTER TABLE files ADD COLUMN storage text NOT NULL DEFAULT 'postgres'
    CHECK (storage IN ('postgres', 's3'));

-- Objects that may exist in the bucket without a live file owning them: written before their
-- `files` row commits (the row and the removal of this one commit together), or of a file
-- whose content was freed (removed once the object is deleted). A crash between leaves the
-- row, and the maintainer deletes the object (and aborts its multipart upload) once
-- `delete_after` has passed (writes get hours to finish, freed content none), unless a live
-- file (or a part of a pending upload) owns it after all.
-- `key` is the object's key after the prefix: `files/<file id>`, or
-- `uploads/<upload id>/<part id>` for an Uploads API part.
CREATE TABLE pending_objects (
    key           text PRIMARY KEY,
    multipart_id  text,
    delete_after  bigint NOT NULL
);
CREATE INDEX pending_objects_due ON pending_objects (delete_after);

-- With storage.backend = "s3" an Uploads API part is an object as it arrives (no
-- `upload_chunks`); completion reads the parts back into the file's object.
ALTER TABLE upload_parts ADD COLUMN in_object boolean NOT NULL DEFAULT false;
