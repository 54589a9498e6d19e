"""Initial schema: statuses, events, files and their meta, stored blobs, users.

Revision ID: 0001
Revises: 
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('app_user',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('password_hash', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_app_user'))
    )
    op.create_table('camera_status',
    sa.Column('status_id', sa.Uuid(), nullable=False),
    sa.Column('camera_id', sa.String(length=255), nullable=False),
    sa.Column('valid_from', sa.BigInteger(), nullable=False),
    sa.Column('valid_to', sa.BigInteger(), nullable=True),
    sa.Column('software_version', sa.Integer(), nullable=False),
    sa.Column('lens', sa.String(length=1024), nullable=True),
    sa.Column('sensor', sa.String(length=1024), nullable=True),
    sa.Column('inst_url', sa.String(length=1024), nullable=True),
    sa.Column('inst_name', sa.String(length=1024), nullable=True),
    sa.Column('latitude', sa.Float(), nullable=False),
    sa.Column('longitude', sa.Float(), nullable=False),
    sa.Column('gps', sa.Boolean(), nullable=False),
    sa.Column('location_error', sa.Float(), nullable=False),
    sa.Column('altitude', sa.Float(), nullable=False),
    sa.Column('azimuth', sa.Float(), nullable=False),
    sa.Column('orientation_error', sa.Float(), nullable=False),
    sa.Column('rotation', sa.Float(), nullable=False),
    sa.Column('width', sa.Float(), nullable=False),
    sa.Column('regions', sa.JSON(), nullable=False),
    sa.Column('imported_by', sa.String(length=255), nullable=True),
    sa.Column('received_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('status_id', name=op.f('pk_camera_status'))
    )
    with op.batch_alter_table('camera_status', schema=None) as batch_op:
        batch_op.create_index('ix_camera_status_camera_valid_from', ['camera_id', 'valid_from'], unique=False)

    op.create_table('stored_blob',
    sa.Column('file_id', sa.Uuid(), nullable=False),
    sa.Column('md5', sa.String(length=32), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('touched_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('file_id', name=op.f('pk_stored_blob'))
    )
    with op.batch_alter_table('stored_blob', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stored_blob_touched_at'), ['touched_at'], unique=False)

    op.create_table('upload_failure',
    sa.Column('file_id', sa.Uuid(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('first_failed_at', sa.BigInteger(), nullable=False),
    sa.Column('last_failed_at', sa.BigInteger(), nullable=False),
    sa.Column('last_md5', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('file_id', name=op.f('pk_upload_failure'))
    )
    op.create_table('event',
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('camera_id', sa.String(length=255), nullable=False),
    sa.Column('event_time', sa.BigInteger(), nullable=False),
    sa.Column('event_type', sa.String(length=2048), nullable=False),
    sa.Column('status_id', sa.Uuid(), nullable=False),
    sa.Column('imported_by', sa.String(length=255), nullable=True),
    sa.Column('received_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['status_id'], ['camera_status.status_id'], name=op.f('fk_event_status_id_camera_status')),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_event'))
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('ix_event_camera_time', ['camera_id', 'event_time'], unique=False)
        batch_op.create_index('ix_event_time', ['event_time'], unique=False)

    op.create_table('user_role',
    sa.Column('user_name', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['user_name'], ['app_user.name'], name=op.f('fk_user_role_user_name_app_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_name', 'role', name=op.f('pk_user_role'))
    )
    op.create_table('event_meta',
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=2048), nullable=False),
    sa.Column('value_type', sa.String(length=16), nullable=False),
    sa.Column('string_value', sa.String(length=1024), nullable=True),
    sa.Column('number_value', sa.Float(), nullable=True),
    sa.Column('number_is_int', sa.Boolean(), nullable=True),
    sa.Column('date_value', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['event.event_id'], name=op.f('fk_event_meta_event_id_event'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('event_id', 'position', name=op.f('pk_event_meta'))
    )
    op.create_table('file_record',
    sa.Column('file_id', sa.Uuid(), nullable=False),
    sa.Column('camera_id', sa.String(length=255), nullable=False),
    sa.Column('mime_type', sa.String(length=255), nullable=False),
    sa.Column('semantic_type', sa.String(length=2048), nullable=False),
    sa.Column('file_time', sa.BigInteger(), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('status_id', sa.Uuid(), nullable=False),
    sa.Column('md5', sa.String(length=32), nullable=True),
    sa.Column('file_name', sa.String(length=255), nullable=True),
    sa.Column('event_id', sa.Uuid(), nullable=True),
    sa.Column('event_position', sa.Integer(), nullable=True),
    sa.Column('imported_by', sa.String(length=255), nullable=True),
    sa.Column('received_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.event_id'], name=op.f('fk_file_record_event_id_event'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['status_id'], ['camera_status.status_id'], name=op.f('fk_file_record_status_id_camera_status')),
    sa.PrimaryKeyConstraint('file_id', name=op.f('pk_file_record')),
    sa.UniqueConstraint('event_id', 'event_position', name=op.f('uq_file_record_event_id'))
    )
    with op.batch_alter_table('file_record', schema=None) as batch_op:
        batch_op.create_index('ix_file_record_camera_time', ['camera_id', 'file_time'], unique=False)

    op.create_table('file_meta',
    sa.Column('file_id', sa.Uuid(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=2048), nullable=False),
    sa.Column('value_type', sa.String(length=16), nullable=False),
    sa.Column('string_value', sa.String(length=1024), nullable=True),
    sa.Column('number_value', sa.Float(), nullable=True),
    sa.Column('number_is_int', sa.Boolean(), nullable=True),
    sa.Column('date_value', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['file_id'], ['file_record.file_id'], name=op.f('fk_file_meta_file_id_file_record'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('file_id', 'position', name=op.f('pk_file_meta'))
    )


def downgrade() -> None:
    op.drop_table('file_meta')
    with op.batch_alter_table('file_record', schema=None) as batch_op:
        batch_op.drop_index('ix_file_record_camera_time')

    op.drop_table('file_record')
    op.drop_table('event_meta')
    op.drop_table('user_role')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_time')
        batch_op.drop_index('ix_event_camera_time')

    op.drop_table('event')
    op.drop_table('upload_failure')
    with op.batch_alter_table('stored_blob', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stored_blob_touched_at'))

    op.drop_table('stored_blob')
    with op.batch_alter_table('camera_status', schema=None) as batch_op:
        batch_op.drop_index('ix_camera_status_camera_valid_from')

    op.drop_table('camera_status')
    op.drop_table('app_user')
