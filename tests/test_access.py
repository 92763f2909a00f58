"""The default policy: owners, and Django permissions (not is_staff) for everyone else's channels."""

import pytest

from agent_channels import publish
from agent_channels.access import OwnerAccessPolicy

from .helpers import create_operator

pytestmark = pytest.mark.django_db


@pytest.fixture
def owned(django_user_model):
    publish("alices", "tick", owner=django_user_model.objects.create_user("alice"))
    return "alices"


@pytest.mark.parametrize(("permissions", "expected"), [
    ((), (False, False)),
    (("view_all_channels",), (True, False)),
    (("control_all_runs",), (False, True)),
    (("view_all_channels", "control_all_runs"), (True, True)),
])
def test_staff_get_what_their_permissions_grant(django_user_model, owned, permissions, expected):
    user = create_operator(django_user_model, "op", permissions)
    assert user.is_staff
    policy = OwnerAccessPolicy()
    assert (policy.can_read(user, owned), policy.can_send(user, owned)) == expected


def test_permissions_through_a_group_count(django_user_model, owned):
    from django.contrib.auth.models import Group, Permission

    operators = Group.objects.create(name="operators")
    operators.permissions.add(Permission.objects.get(codename="view_all_channels"))
    django_user_model.objects.create_user("op").groups.add(operators)
    user = django_user_model.objects.get(username="op")
    assert OwnerAccessPolicy().can_read(user, owned) is True
    assert OwnerAccessPolicy().can_send(user, owned) is False


def test_superusers_have_every_permission_unless_inactive(django_user_model, owned):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "x")
    policy = OwnerAccessPolicy()
    assert (policy.can_read(root, owned), policy.can_send(root, owned)) == (True, True)
    root.is_active = False
    assert (policy.can_read(root, owned), policy.can_send(root, owned)) == (False, False)


def test_owners_need_no_permission(django_user_model, owned):
    alice = django_user_model.objects.get(username="alice")
    assert OwnerAccessPolicy().can_read(alice, owned) and OwnerAccessPolicy().can_send(alice, owned)
    bob = django_user_model.objects.create_user("bob")
    assert not OwnerAccessPolicy().can_read(bob, owned)
